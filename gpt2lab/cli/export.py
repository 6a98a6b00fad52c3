"""`gpt2lab export`: a checkpoint of a run as a plain Hugging Face GPT-2 directory (what `sample`, `eval`, `serve`,
transformers and lm-eval read), also from a sharded (FSDP) checkpoint."""

from __future__ import annotations

from gpt2lab.errors import GPT2LabError


def add_command(commands):
    p = commands.add_parser(
        "export", help="write a run's checkpoint as a plain Hugging Face GPT-2 directory",
        description="Write RUN's newest checkpoint (or --step N's) as config.json + model.safetensors + GPT-2's "
        "tokenizer files in --out: what transformers, lm-eval and every gpt2lab command read. A sharded (FSDP) "
        "checkpoint is gathered into one model on this machine's CPU.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--step", type=int, metavar="N", help="the checkpoint of step N (default: the newest)")
    p.add_argument("--out", required=True, metavar="DIR", help="the directory to write (created; must be empty)")
    p.add_argument("--ema", action="store_true",
                   help="the moving average of the weights (a run trained with optim.ema) instead of the weights")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from gpt2lab.storage.atomic import atomic_directory
    from gpt2lab.storage.run_directory import RunDirectory
    from gpt2lab.train.checkpointing import export_checkpoint

    run_dir = RunDirectory(args.run_dir)
    found = dict(run_dir.checkpoints())
    if not found:
        raise GPT2LabError(f"{run_dir.path} has no complete checkpoint (is it a run directory of `gpt2lab train`?)")
    step = max(found) if args.step is None else args.step
    if step not in found:
        raise GPT2LabError(f"{run_dir.path} has no checkpoint of step {step}; it has steps "
                           f"{', '.join(map(str, sorted(found)))}")
    from pathlib import Path

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GPT2LabError(f"--out {out} exists and is not an empty directory; choose a new one")
    with atomic_directory(out) as tmp:  # an interrupted export leaves nothing that looks like a model
        export_checkpoint(found[step], tmp, averaged=args.ema)
    what = "the weights' moving average at " if args.ema else ""
    print(f"wrote {out} ({what}step {step} of {run_dir.path})")
    return 0
