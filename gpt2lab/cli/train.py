"""`gpt2lab train`: train GPT-2 from scratch or fine-tune one (CPU, GPU, or torchrun for many), or plan it."""

from __future__ import annotations

import json

from gpt2lab.errors import GPT2LabError


def add_command(commands):
    p = commands.add_parser(
        "train", help="train GPT-2 from scratch or fine-tune one (CPU, GPU, or torchrun for many)",
        description="Train with a preset and/or a TOML/YAML config, any key overridable: `--set optim.lr=3e-4` "
        "or `--optim.lr 3e-4`. Under torchrun every process runs this same command. Ctrl-C saves a checkpoint; "
        "--resume continues exactly where the newest checkpoint left off.")
    p.add_argument("--preset", help="a shipped config (shakespeare-cpu, gpt2-124m-fineweb-edu)")
    p.add_argument("--config", metavar="FILE", help="a TOML or YAML file of [section] key = value")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (config, metrics, samples, checkpoints)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], help="override a config key")
    p.add_argument("--init", metavar="MODEL", help="'scratch' or a MODEL to fine-tune (shortcut for model.init)")
    p.add_argument("--steps", type=int, help="shortcut for schedule.max_steps")
    p.add_argument("--device", help="shortcut for runtime.device (auto, cpu, cuda, mps)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-verify", action="store_true",
                   help="skip checking the data shards' sha256 at start (shortcut for data.verify=false)")
    p.add_argument("--list-keys", action="store_true", help="print every config key with its value and exit")
    plan = p.add_argument_group("planning (--dry-run: estimates, nothing is trained or written)")
    plan.add_argument("--dry-run", action="store_true",
                      help="print the plan (parameters, batch split, epochs, memory per device and whether it fits, "
                      "time, checkpoint disk) for the resolved config and exit; --out is optional")
    plan.add_argument("--json", action="store_true", help="with --dry-run: the plan as one JSON object")
    plan.add_argument("--assume-mfu", type=float, metavar="FRACTION",
                      help="with --dry-run: model FLOPs utilisation to assume for the time (default: 0.35 on GPUs, "
                      "0.4 on CPUs; the plan names its source)")
    plan.add_argument("--plan-device", metavar="NAME",
                      help="with --dry-run: plan for a GPU this machine does not have, from published specs: "
                      "h100, h100-pcie, h200, a100, a100-40gb, l40s, a10, l4, rtx4090, rtx3090")
    plan.add_argument("--plan-gpus", type=int, metavar="N",
                      help="with --dry-run: the number of processes (GPUs) to plan for (default: torchrun's "
                      "WORLD_SIZE, else 1)")
    p.set_defaults(run=run, takes_config_flags=True)
    return p


def run(args) -> int:
    from gpt2lab.storage.run_directory import RunDirectory
    from gpt2lab.train.config import to_toml
    from gpt2lab.train.config_files import command_line_overrides, read_run_config, resolve_config
    from gpt2lab.train.trainer import train

    base = None
    if args.resume and not (args.preset or args.config) and args.out and RunDirectory(args.out).config_file.is_file():
        base = read_run_config(args.out)  # `--resume` alone: continue with the run's own config
    shortcuts = {"model.init": args.init, "schedule.max_steps": args.steps, "runtime.device": args.device,
                 "data.verify": "false" if args.no_verify else None}
    overrides = command_line_overrides(args.set, args.config_flags, shortcuts)
    config = resolve_config(args.preset, args.config, overrides, base=base)
    if args.list_keys:
        print(to_toml(config), end="")
        return 0
    if args.dry_run:
        return run_plan(args, config)
    planning = [flag for flag, given in (("--json", args.json), ("--assume-mfu", args.assume_mfu is not None),
                                         ("--plan-device", args.plan_device), ("--plan-gpus", args.plan_gpus)) if given]
    if planning:
        raise GPT2LabError(f"{planning[0]} only applies to a plan; add --dry-run")
    if not args.out:
        raise GPT2LabError("--out RUN_DIR is required: the directory for config, metrics, samples and checkpoints")
    result = train(config, args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    return result.exit_code


def run_plan(args, config) -> int:
    """`gpt2lab train ... --dry-run`: the plan for the resolved config; nothing trained, nothing written."""
    from gpt2lab.runtime import distributed
    from gpt2lab.train import plan

    if args.assume_mfu is not None and not 0 < args.assume_mfu <= 1:
        raise GPT2LabError(f"--assume-mfu must be a fraction in (0, 1], e.g. 0.4 for 40 %; got {args.assume_mfu}")
    if args.plan_gpus is not None and args.plan_gpus < 1:
        raise GPT2LabError(f"--plan-gpus must be at least 1, got {args.plan_gpus}")
    launch = distributed.launch()
    if launch.rank != 0:
        return 0  # under torchrun every process would plan the same run: rank 0 says it
    result = plan.make_plan(config, plan.plan_device(config, args.plan_device), args.plan_gpus or launch.world_size,
                            args.assume_mfu)
    print(json.dumps(result.to_json()) if args.json else plan.format_plan(result))
    return 0
