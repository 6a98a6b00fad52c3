"""GPTConfig (gpt2lab/model/config.py): the released presets, and shapes that cannot be built refused."""

import pytest

from gpt2lab import GPTConfig

from tests.conftest import ODD


@pytest.mark.parametrize("name, layers, heads, dim", [("gpt2-medium", 24, 16, 1024), ("gpt2-xl", 48, 25, 1600)])
def test_presets(name, layers, heads, dim):
    config = GPTConfig.from_preset(name)
    assert (config.n_layer, config.n_head, config.n_embd, config.block_size) == (layers, heads, dim, 1024)


@pytest.mark.parametrize("bad", [dict(n_embd=50, n_head=3), dict(n_layer=0), dict(vocab_size=-1), dict(block_size=2.5)])
def test_invalid_config_is_refused(bad):
    with pytest.raises(ValueError):
        GPTConfig(**{**ODD, **bad})


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown GPT-2 preset 'gpt3'"):
        GPTConfig.from_preset("gpt3")
