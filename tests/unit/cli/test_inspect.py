"""`gpt2lab inspect` in-process (gpt2lab/cli/inspect.py): the key table, the PNG plots, and a --plots that is a file."""

import pytest

from gpt2lab import GPT
from gpt2lab.cli import main
from gpt2lab.tools.inspect import InspectError, write_plots

from tests.conftest import tiny_gpt
from tests.png_utils import assert_valid_png


def test_cli_inspect_prints_table_and_writes_pngs(tiny_model_dir, tmp_path, capsys):
    plots = tmp_path / "plots" / "nested"
    assert main(["inspect", str(tiny_model_dir), "--plots", str(plots)]) == 0  # in-process: a subprocess costs 10 s
    out = capsys.readouterr().out
    model = GPT.from_pretrained(tiny_model_dir)
    for key in model.state_dict():
        assert f"\n{key} " in out
    assert f"{model.num_parameters():,}" in out
    names = ["wpe.png", "wpe_channels.png", "h0_attn_c_attn_weight.png"]
    assert sorted(p.name for p in plots.iterdir()) == sorted(names)  # no temporary files left behind
    for name in names:
        assert_valid_png(plots / name)
        assert str(plots / name) in out


def test_plots_pointing_at_a_file_is_a_one_line_error(tiny_model_dir, tmp_path, capsys):
    target = tmp_path / "taken.png"
    target.write_text("not a directory")
    assert main(["inspect", str(tiny_model_dir), "--plots", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file" in err and "Traceback" not in err
    with pytest.raises(InspectError, match="is a file"):  # the library checks too
        write_plots(tiny_gpt(), target)
    assert target.read_text() == "not a directory"
