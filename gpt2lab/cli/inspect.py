"""`gpt2lab inspect`: a model's config, weight table and parameter counts; optionally plots of its weights."""

from __future__ import annotations

from gpt2lab.cli.common import MODEL_HELP


def add_command(commands):
    p = commands.add_parser(
        "inspect",
        help="print a model's config, weight table and parameter counts; optionally plot its weights",
        description="Print the config, every state-dict key with shape, dtype and parameter count, and the "
        "totals (all / embedding / non-embedding). With --plots DIR, also write PNGs of the position embeddings "
        "(wpe) as an image, a few wpe channels as curves, and a 300x300 block of layer 0's attention weight.",
    )
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--plots", metavar="DIR", help="write the PNG plots into DIR (created if missing)")
    p.add_argument("--channels", metavar="C", type=int, nargs="+",
                   help="wpe channels to draw as curves (default: 150 200 250, or three spread evenly in a small "
                   "model)")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from gpt2lab.model.gpt import load_model
    from gpt2lab.storage.atomic import writable_directory
    from gpt2lab.tools.inspect import format_report, write_plots

    if args.plots:  # an unusable --plots fails now, not after the model load and the report
        writable_directory(args.plots)
    model = load_model(args.model, device="cpu")
    print(format_report(model))
    if args.plots:
        print()
        for path in write_plots(model, args.plots, channels=args.channels):
            print(f"wrote {path}")
    return 0
