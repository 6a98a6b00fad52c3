"""The figure `gpt2lab plot` draws (gpt2lab/tools/plot.py), caught as it is saved: every run's curves, the GPT-2
baselines where they apply, and the x axis in training minutes."""

import json

from gpt2lab.cli import main

from tests.train_utils import one_line_error, run_main, write_dataset


def _run_trained_on(tmp_path, name: str, source: str, records: list[dict]):
    """A run directory whose config.toml names a prepared dataset of `source`, with these metrics."""
    data = write_dataset(tmp_path / f"data-{name}", source=source)
    run = tmp_path / name
    run.mkdir()
    (run / "config.toml").write_text(f'[data]\ndir = "{data}"\n')
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def test_plot_draws_every_run_and_the_gpt2_baselines(tmp_path, monkeypatch, capsys):
    """The figure itself, caught as it is saved: each run's train and val curves with its logged values, and the
    dashed GPT-2 124M baselines (HellaSwag acc_norm 0.2955 and GPT-3's 0.337 always; the FineWeb-Edu val loss
    3.2924 only over runs trained on FineWeb-Edu: not over the Shakespeare demo, a different corpus)."""
    from matplotlib.figure import Figure

    runs = []
    for i, name in enumerate(("alpha", "beta")):
        records = [{"step": s, "loss": 10.0 - s - i} for s in range(1, 5)] + [
            {"step": 4, "val_loss": 5.5 - i, **({"val_loss_ema": 5.4} if i else {})},
            {"step": 4, "hellaswag_acc": 0.25, "hellaswag_acc_norm": 0.26 + i / 100}]
        runs.append(_run_trained_on(tmp_path, name, "hf:HuggingFaceFW/fineweb-edu:sample-10BT", records))
    figures = []
    real_savefig = Figure.savefig

    def savefig(fig, *args, **kwargs):
        figures.append(fig)
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)

    def curves(axis):
        return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in axis.get_lines()}

    def flat(axis):  # horizontal lines: their y value
        return sorted({round(ys[0], 4) for xs, ys in curves(axis).values() if len(set(ys)) == 1 and len(ys) == 2})

    assert main(["plot", *map(str, runs), "--out", str(tmp_path / "both.png")]) == 0
    loss_axis, hellaswag_axis = figures[-1].axes
    drawn = curves(loss_axis)
    assert drawn["alpha train"] == ([1, 2, 3, 4], [9.0, 8.0, 7.0, 6.0])
    assert drawn["beta train"] == ([1, 2, 3, 4], [8.0, 7.0, 6.0, 5.0])
    assert drawn["alpha val"] == ([4], [5.5]) and drawn["beta val"] == ([4], [4.5])
    assert drawn["beta val, average"] == ([4], [5.4]) and "alpha val, average" not in drawn  # optim.ema's curve
    assert flat(loss_axis) == [3.2924]
    assert curves(hellaswag_axis)["beta acc_norm"] == ([4], [0.27])
    assert flat(hellaswag_axis) == [0.2955, 0.337]

    assert main(["plot", *map(str, runs), "--out", str(tmp_path / "bare.png"), "--no-baselines"]) == 0
    assert [flat(axis) for axis in figures[-1].axes] == [[], []]

    demo = _run_trained_on(tmp_path, "demo", "shakespeare", records)
    assert main(["plot", str(demo), "--out", str(tmp_path / "demo.png")]) == 0
    loss_axis, hellaswag_axis = figures[-1].axes
    assert flat(loss_axis) == [] and flat(hellaswag_axis) == [0.2955, 0.337]
    assert "demo val" in curves(loss_axis)
    assert (tmp_path / "both.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_at_equal_wall_time_puts_each_val_loss_at_the_training_minutes_spent_by_its_step(tmp_path, monkeypatch,
                                                                                            capsys):
    """--x time: a slower run's val point lands further right (summed ms_per_step, in minutes); --val-only drops
    the train curves. A run that logged no step times cannot be drawn against time: one line, exit 2."""
    from matplotlib.figure import Figure

    def run(name, ms):
        records = [{"step": s, "loss": 9.0 - s, "ms_per_step": ms} for s in range(1, 5)]
        return _run_trained_on(tmp_path, name, "shakespeare", records + [{"step": 2, "val_loss": 6.0},
                                                                         {"step": 4, "val_loss": 5.0}])

    fast, slow = run("fast", 30_000.0), run("slow", 60_000.0)  # half a minute, a minute per step
    figures = []
    real_savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (figures.append(fig), real_savefig(fig, *a, **k)))
    assert main(["plot", str(fast), str(slow), "--x", "time", "--val-only", "--out", str(tmp_path / "t.png")]) == 0
    lines = {line.get_label(): list(line.get_xdata()) for line in figures[-1].axes[0].get_lines()}
    assert lines == {"fast val": [1.0, 2.0], "slow val": [2.0, 4.0]}
    assert "minutes" in figures[-1].axes[0].get_xlabel()

    untimed = _run_trained_on(tmp_path, "untimed", "shakespeare", [{"step": 1, "loss": 9.0}])
    one_line_error(run_main(capsys, "plot", untimed, "--x", "time", "--out", tmp_path / "u.png"), "ms_per_step")
