"""`gpt2lab plot`: train/val loss (and HellaSwag) of one or more runs in one PNG."""

from __future__ import annotations

from pathlib import Path


def add_command(commands):
    p = commands.add_parser(
        "plot", help="plot train/val loss (and HellaSwag) of one or more runs into a PNG",
        description="Read RUN_DIR/metrics.jsonl of each run and draw train loss, val loss and, when logged, "
        "HellaSwag accuracy, with OpenAI GPT-2 124M baselines as dashed lines: HellaSwag's always, its FineWeb-Edu "
        "val loss only over runs trained on FineWeb-Edu (a val loss on another corpus is not comparable).")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", metavar="FILE.png", help="output image (default: RUN_DIR/loss.png of the first run)")
    p.add_argument("--no-baselines", action="store_true", help="leave out the GPT-2 124M reference lines")
    p.add_argument("--x", choices=("step", "time"), default="step",
                   help="x axis: the optimizer step (default), or minutes of training (the summed ms_per_step), to "
                   "compare runs at equal wall time")
    p.add_argument("--val-only", action="store_true", help="draw only the val loss curves (clearer with many runs)")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from gpt2lab.tools.plot import plot_runs

    out = args.out or str(Path(args.runs[0]) / "loss.png")
    path = plot_runs(args.runs, out, baselines=not args.no_baselines, x=args.x, train=not args.val_only)
    print(f"wrote {path}")
    return 0
