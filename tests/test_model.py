import pytest
import torch

from gpt2lab import GPT, GPTConfig
from gpt2lab.model import ContextLengthError
from tests.conftest import ODD, tiny_gpt


def test_gpt2_parameter_count():
    with torch.device("meta"):
        model = GPT(GPTConfig.from_preset("gpt2"))
        padded = GPT(GPTConfig.from_preset("gpt2", vocab_size=50304))
    assert model.num_parameters() == 124_439_808
    assert padded.num_parameters() == 124_475_904
    assert model.num_parameters(exclude_embeddings=True) == 124_439_808 - 50257 * 768 - 1024 * 768


@pytest.mark.parametrize("name, layers, heads, dim", [("gpt2-medium", 24, 16, 1024), ("gpt2-xl", 48, 25, 1600)])
def test_presets(name, layers, heads, dim):
    config = GPTConfig.from_preset(name)
    assert (config.n_layer, config.n_head, config.n_embd, config.block_size) == (layers, heads, dim, 1024)


def test_lm_head_shares_storage_with_wte():
    model = tiny_gpt()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def test_init_statistics():
    torch.manual_seed(0)
    config = GPTConfig(n_layer=8, n_head=4, n_embd=256, block_size=128, vocab_size=4096)
    model = GPT(config)
    residual_std = 0.02 / (2 * config.n_layer) ** 0.5
    for block in model.transformer.h:
        assert block.attn.c_proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
        assert block.mlp.c_proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
        assert block.attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert block.mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert torch.count_nonzero(block.attn.c_attn.bias) == 0
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert model.transformer.wpe.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_forward_shapes_and_loss():
    model = tiny_gpt()
    idx = torch.randint(0, ODD["vocab_size"], (2, 10))
    logits, loss = model(idx)
    assert logits.shape == (2, 10, ODD["vocab_size"]) and loss is None
    # Random targets: a freshly initialised model is close to uniform, loss ~ ln(vocab).
    logits, loss = model(idx, targets=torch.randint(0, ODD["vocab_size"], (2, 10)))
    assert loss.ndim == 0 and loss.item() == pytest.approx(torch.log(torch.tensor(1011.0)).item(), rel=0.05)
    last, _ = model(idx, last_logits_only=True)
    torch.testing.assert_close(last[:, 0], logits[:, -1])


def test_targets_minus_100_are_ignored():
    model = tiny_gpt()
    idx = torch.randint(0, ODD["vocab_size"], (1, 8))
    targets = idx.clone()
    targets[0, 4:] = -100
    _, partial = model(idx, targets)
    logits, _ = model(idx)
    expected = torch.nn.functional.cross_entropy(logits[0, :4], idx[0, :4])
    torch.testing.assert_close(partial, expected)


def test_too_long_sequence_is_a_clear_value_error():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="longer than the model's context of 37"):
        model(torch.zeros(1, 38, dtype=torch.long))
    with pytest.raises(ContextLengthError):
        model(torch.zeros(1, 38, dtype=torch.long))


@pytest.mark.parametrize("bad", [dict(n_embd=50, n_head=3), dict(n_layer=0), dict(vocab_size=-1), dict(block_size=2.5)])
def test_invalid_config_is_refused(bad):
    with pytest.raises(ValueError):
        GPTConfig(**{**ODD, **bad})


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown GPT-2 preset 'gpt3'"):
        GPTConfig.from_preset("gpt3")


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "transposed-weight"])
@pytest.mark.parametrize("rows", [1, 3, 16, 17])
def test_decoding_matmul_split_over_threads_equals_addmm(rows, contiguous):
    """Conv1D's few-rows path (inference, CPU, several threads) gives x @ W + b like the plain one."""
    from gpt2lab.model import Conv1D

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        layer = Conv1D(96, 40)
        torch.nn.init.normal_(layer.weight)
        if not contiguous:  # a weight assigned from a transposed tensor: the split must follow its strides
            layer.weight = torch.nn.Parameter(layer.weight.detach().t().contiguous().t())
        torch.nn.init.normal_(layer.bias)
        x = torch.randn(rows, 1, 96)
        with torch.no_grad():
            got = layer(x)
        expected = (x.double() @ layer.weight.double() + layer.bias.double()).float()
        assert got.shape == (rows, 1, 40)
        assert torch.allclose(got, expected, atol=1e-4, rtol=1e-5)
    finally:
        torch.set_num_threads(before)
