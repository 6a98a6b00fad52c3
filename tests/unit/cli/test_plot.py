"""`gpt2lab plot` (gpt2lab/cli/plot.py): the PNG goes into the first run by default, and each flag reaches the plot
as the option it names. (What the figure shows: tests/unit/tools/test_plot.py.)"""

import json

from gpt2lab.cli import main
from gpt2lab.tools import plot

from tests.png_utils import PNG_SIGNATURE


def run_with_metrics(path, records):
    path.mkdir()
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_the_png_goes_into_the_first_run_by_default(tmp_path, capsys):
    records = [{"step": s, "loss": 9.0 - s, "ms_per_step": 10.0} for s in (1, 2, 3)]
    first, second = run_with_metrics(tmp_path / "first", records), run_with_metrics(tmp_path / "second", records)
    assert main(["plot", str(first), str(second)]) == 0
    assert (first / "loss.png").read_bytes()[:8] == PNG_SIGNATURE
    assert not (second / "loss.png").exists()
    assert capsys.readouterr().out == f"wrote {first / 'loss.png'}\n"
    assert main(["plot", str(first), "--out", str(tmp_path / "elsewhere.png")]) == 0
    assert (tmp_path / "elsewhere.png").read_bytes()[:8] == PNG_SIGNATURE


def test_each_flag_reaches_the_plot(tmp_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(plot, "plot_runs", lambda runs, out, **options: calls.append((runs, out, options)) or out)
    assert main(["plot", "a", "b", "--out", "x.png"]) == 0
    assert main(["plot", "a", "--no-baselines", "--x", "time", "--val-only"]) == 0
    assert calls == [(["a", "b"], "x.png", dict(baselines=True, x="step", train=True)),
                     (["a"], "a/loss.png", dict(baselines=False, x="time", train=False))]
    assert capsys.readouterr().out == "wrote x.png\nwrote a/loss.png\n"
