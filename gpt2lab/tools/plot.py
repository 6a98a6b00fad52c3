"""`gpt2lab plot`: train/val loss (and HellaSwag accuracy when logged) of one or more runs, in one PNG.

Dashed lines are OpenAI GPT-2 124M's scores, the baselines a from-scratch 124M run sets out to beat. A baseline is
drawn only where it measures the same thing as the curves: HellaSwag is one fixed benchmark for every run, but a
val loss depends on the corpus, so GPT-2's FineWeb-Edu val loss is drawn only over runs trained on FineWeb-Edu
(not, say, over the Shakespeare demo, whose held-out plays are a different distribution).
"""

import bisect
import json
from pathlib import Path

from gpt2lab.storage.atomic import atomic_path, writable_file
from gpt2lab.errors import BadValue, GPT2LabError
from gpt2lab.storage.run_directory import RunDirectory, read_metrics

BASELINE_VAL_LOSS = ("OpenAI GPT-2 124M (FineWeb-Edu val)", 3.2924)
BASELINE_VAL_CORPUS = "fineweb-edu"  # the val loss baseline is measured on this corpus' val shard
BASELINE_HELLASWAG = [("OpenAI GPT-2 124M", 0.2955), ("GPT-3 124M", 0.337)]


def data_source(run: Path) -> str:
    """What the run trained on, as `gpt2lab prepare` recorded it (e.g. "shakespeare",
    "hf:HuggingFaceFW/fineweb-edu:sample-10BT"), or "" when the run's config or its dataset cannot be read."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib
    try:
        data_dir = tomllib.loads(RunDirectory(run).config_file.read_text(encoding="utf-8"))["data"]["dir"]
        return str(json.loads((Path(data_dir) / "manifest.json").read_text(encoding="utf-8"))["source"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def series(records: list[dict], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    """(x, value) of every record that logged `key`; x is the step, or with x="time" the training minutes it
    had taken by then (summed `ms_per_step`: time spent evaluating, sampling and checkpointing is left out, so
    runs interrupted and resumed, or evaluated more often, still compare fairly)."""
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    if x == "time":
        minutes = elapsed_minutes(records)
        points = [(minutes(step), value) for step, value in points]
    return [s for s, _ in points], [v for _, v in points]


def elapsed_minutes(records: list[dict]):
    """step -> minutes of training up to and including that step (0 before the first)."""
    steps, total = [0], [0.0]
    for r in records:
        if isinstance(r.get("ms_per_step"), (int, float)) and r["step"] > steps[-1]:
            steps.append(r["step"])
            total.append(total[-1] + r["ms_per_step"] / 60_000)

    def minutes(step: int) -> float:
        return total[bisect.bisect_right(steps, step) - 1]
    return minutes


def plot_runs(run_dirs, out, baselines: bool = True, x: str = "step", train: bool = True) -> Path:
    # A Figure of its own, not pyplot (as in weights_report.py): no global figure registry, no GUI backend to choose.
    from matplotlib.figure import Figure

    if x not in ("step", "time"):
        raise BadValue("x", f"{x}: choose step or time")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise BadValue("out", f"{out}: the plot is a PNG; give a file name ending in .png")
    runs = []
    for run in map(Path, run_dirs):
        path = RunDirectory(run).metrics_file
        if not path.is_file():
            raise GPT2LabError(f"{run} has no metrics.jsonl: pass a run directory written by `gpt2lab train`")
        records = read_metrics(path)
        if not any("loss" in r for r in records):
            raise GPT2LabError(f"{path} has no training steps logged yet")
        if x == "time" and not any("ms_per_step" in r for r in records):
            raise GPT2LabError(f"{path} logs no ms_per_step, so it has no training time: plot it with --x step")
        runs.append((run.name or str(run), records))
    val_baseline = baselines and any(BASELINE_VAL_CORPUS in data_source(run).lower() for run in map(Path, run_dirs))
    writable_file(out)  # a refused output fails before the drawing

    has_hellaswag = any(any("hellaswag_acc_norm" in r for r in records) for _, records in runs)
    fig = Figure(figsize=(13 if has_hellaswag else 8, 5))
    axes = fig.subplots(1, 2 if has_hellaswag else 1, squeeze=False)
    ax = axes[0][0]
    for i, (name, records) in enumerate(runs):
        color = f"C{i}"
        if train:
            steps, loss = series(records, "loss", x)
            ax.plot(steps, loss, color=color, alpha=0.35, linewidth=0.8, label=f"{name} train")
        steps, val = series(records, "val_loss", x)
        if steps:
            ax.plot(steps, val, color=color, marker="o", markersize=3, label=f"{name} val")
        steps, val = series(records, "val_loss_ema", x)  # the weights' moving average (optim.ema)
        if steps:
            ax.plot(steps, val, color=color, marker="s", markersize=3, linestyle="--", label=f"{name} val, average")
    if val_baseline:
        label, value = BASELINE_VAL_LOSS
        ax.axhline(value, color="red", linestyle="--", linewidth=1, label=f"{label} {value}")
    xlabel = "training time (minutes, summed ms_per_step)" if x == "time" else "step"
    ax.set(xlabel=xlabel, ylabel="loss", title="loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)

    if has_hellaswag:
        ax = axes[0][1]
        for i, (name, records) in enumerate(runs):
            steps, acc = series(records, "hellaswag_acc_norm", x)
            if steps:
                ax.plot(steps, acc, color=f"C{i}", marker="o", markersize=3, label=f"{name} acc_norm")
        if baselines:
            for (label, value), color in zip(BASELINE_HELLASWAG, ("red", "purple")):
                ax.axhline(value, color=color, linestyle="--", linewidth=1, label=f"{label} {value}")
        ax.set(xlabel=xlabel, ylabel="accuracy", title="HellaSwag (acc_norm)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)

    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    return out
