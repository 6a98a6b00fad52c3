"""What `gpt2lab inspect` reports (gpt2lab/tools/inspect.py): the key table, the parameter totals, and the PNG plots.
(The command itself: tests/unit/cli/test_inspect.py.)"""

import pytest
import torch

from gpt2lab import GPT, GPTConfig
from gpt2lab.tools.inspect import InspectError, default_channels, format_report, parameter_totals, write_plots

from tests.conftest import tiny_gpt
from tests.png_utils import assert_valid_png


def test_gpt2_totals_and_every_key_listed():
    with torch.device("meta"):  # shapes only: no 500 MB of random weights
        model = GPT(GPTConfig())
    assert parameter_totals(model) == {"all": 124_439_808, "embedding": 39_383_808, "non-embedding": 85_056_000}
    report = format_report(model)
    lines = report.splitlines()
    for key, tensor in model.state_dict().items():
        row = next(line for line in lines if line.split()[:1] == [key])
        assert str(tuple(tensor.shape)) in row
    assert "(tied to transformer.wte.weight)" in next(line for line in lines if line.startswith("lm_head.weight"))
    assert "124,439,808" in report and "85,056,000" in report and "n_layer" in report


def test_channels_flag_and_attention_block_larger_than_300(tmp_path):
    model = tiny_gpt(n_embd=312, n_head=4, block_size=40)  # c_attn is 312 x 936: a 300 x 300 block is cut out
    paths = write_plots(model, tmp_path, channels=[0, 311])
    for path in paths:
        assert_valid_png(path)
    assert default_channels(768) == (150, 200, 250)
    assert default_channels(48) == (12, 24, 36)


@pytest.mark.parametrize("channels", [[48], [-1], []])
def test_channel_outside_the_model_is_refused(tmp_path, channels):
    with pytest.raises(InspectError, match="channels must be in 0..47"):
        write_plots(tiny_gpt(), tmp_path, channels=channels)


def test_every_row_shows_the_tensors_dtype_and_parameter_count():
    model = tiny_gpt().to(torch.bfloat16)
    lines = format_report(model).splitlines()
    for key, tensor in model.state_dict().items():
        row = next(line for line in lines if line.split()[:1] == [key])
        assert "bfloat16" in row and "float32" not in row, row
        if key != "lm_head.weight":  # the tied one shows what it is tied to instead
            assert row.split()[-1] == f"{tensor.numel():,}", row
    assert "  block_size           37" in lines and "  n_head               3" in lines  # the config
    assert sum(int(line.split()[-1].replace(",", "")) for line in lines
               if line.split()[:1] and line.split()[0].startswith("transformer.")) == model.num_parameters()


def test_plots_draw_wpe_its_channels_and_the_first_attention_block(tmp_path, monkeypatch):
    import numpy as np

    from gpt2lab.tools import inspect as weights_report

    figures = {}
    real_save = weights_report._save

    def save(fig, path):  # keep each figure to look at what it shows
        figures[path.name] = fig
        return real_save(fig, path)

    monkeypatch.setattr(weights_report, "_save", save)
    model = tiny_gpt(seed=5)
    write_plots(model, tmp_path, channels=[3, 40])
    wpe = model.transformer.wpe.weight.detach().numpy()
    (image,) = figures["wpe.png"].axes[0].get_images()
    assert np.array_equal(image.get_array(), wpe)
    curves = figures["wpe_channels.png"].axes[0].get_lines()
    assert [line.get_label() for line in curves] == ["channel 3", "channel 40"]
    assert all(np.array_equal(line.get_ydata(), wpe[:, c]) for line, c in zip(curves, (3, 40)))
    (block,) = figures["h0_attn_c_attn_weight.png"].axes[0].get_images()
    assert np.array_equal(block.get_array(), model.transformer.h[0].attn.c_attn.weight.detach().numpy())  # 48 x 144
