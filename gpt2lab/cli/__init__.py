"""The `gpt2lab` command: a thin argparse layer over the library. Each subcommand has `add_<command>_command`
(its flags) and `run_<command>(args) -> int` (library calls, printing, the exit code). `main` runs it: a
`GPT2LabError` (bad user input) or an OS refusal becomes one line on stderr and exit code 2, said once under
torchrun (every process runs the command: train, eval), whose workers then leave through
`distributed.exit_process`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gpt2lab.runtime import distributed
from gpt2lab.errors import GPT2LabError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage dump
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gpt2lab",
        description="GPT-2 from scratch: look inside it, sample it, prepare data, train, evaluate, benchmark.",
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for add_command in COMMANDS:
        add_command(commands)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    # `gpt2lab train` also takes any config key as a dotted flag (`--optim.lr 3e-4`): left over by argparse.
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_config_flags", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.config_flags = extra
    if not distributed.launched_by_torchrun():
        return run_command(args)
    # Under torchrun every process runs the command (train, eval): rank 0 says a user error, the same on every
    # rank, once; and a worker must leave through exit_process (see there for why), which never returns.
    distributed.exit_process(run_command(args, say_user_errors=int(os.environ.get("RANK", 0)) == 0))


def run_command(args, say_user_errors: bool = True) -> int:
    """Run the subcommand; what the user or the OS got wrong becomes one line on stderr and exit code 2."""
    try:
        return args.run(args)
    except GPT2LabError as e:
        if say_user_errors:
            print(f"gpt2lab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `gpt2lab sample ... | head`: the reader has all it wanted (before OSError, its base)
        return 0
    except OSError as e:
        if e.errno is None:
            raise
        # The OS refused something the library did not wrap (a read, say): still one line, naming the path.
        where = f"{e.filename}: " if e.filename else ""
        print(f"gpt2lab {args.command}: error: {where}{e.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gpt2lab {args.command}: interrupted", file=sys.stderr)
        return 130


def _version() -> str:
    from gpt2lab import __version__

    return f"gpt2lab {__version__}"


def _token_count(text: str) -> int:
    """'100M', '2.5B', '50k' or a plain integer."""
    scale = {"k": 10**3, "m": 10**6, "b": 10**9}.get(text[-1:].lower(), 1)
    try:
        value = float(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a token count (e.g. 100M, 2.5B, 50000)") from None
    if value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of tokens")
    return int(value)


def add_prepare_command(commands) -> None:
    p = commands.add_parser("prepare", help="tokenise a corpus into GPT-2 token shards for training",
                            description="Tokenise documents into uint16 GPT-2 token shards + manifest.json. SOURCE: "
                            ".txt/.jsonl/.json/.parquet files, directories or globs; hf:NAME[:CONFIG]; shakespeare.")
    p.add_argument("sources", nargs="+", metavar="SOURCE")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--shard-size", type=_token_count, default=100_000_000, help="tokens per shard (default 100M)")
    split = p.add_mutually_exclusive_group()
    split.add_argument("--val-fraction", type=float, help="every (1/F)-th document goes to val (default 0.01; "
                       "shakespeare holds out whole plays)")
    split.add_argument("--val-docs", type=int, help="the first N documents go to val")
    p.add_argument("--text-field", default="text", help="JSON field / parquet column with the text (default text)")
    p.add_argument("--hf-split", default="train", help="split of an hf: dataset (default train)")
    p.add_argument("--max-tokens", type=_token_count, help="stop after this many tokens (a prefix)")
    p.add_argument("--strict", action="store_true", help="malformed JSONL records are errors, not skipped")
    p.add_argument("--overwrite", action="store_true", help="replace a different dataset in --out")
    p.add_argument("--threads", type=int, help="tokeniser threads (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run_prepare)


def run_prepare(args) -> int:
    from gpt2lab.data import PrepareConfig, prepare

    config = PrepareConfig(
        sources=args.sources, out=args.out, shard_size=args.shard_size, val_fraction=args.val_fraction,
        val_docs=args.val_docs, text_field=args.text_field, hf_split=args.hf_split, max_tokens=args.max_tokens,
        strict=args.strict, overwrite=args.overwrite, threads=args.threads, progress=not args.no_progress,
    )
    prepare(config, log=lambda line: print(line, file=sys.stderr if line.startswith("warning") else sys.stdout))
    return 0


# --------------------------------------------------------------------------------------------- eval


def add_eval_command(commands) -> None:
    p = commands.add_parser(
        "eval",
        help="HellaSwag accuracy or held-out loss of a model",
        description="Evaluate MODEL (gpt2, a hub id, a local HF directory or a run directory): HellaSwag "
        "accuracy (completion-style: acc = lowest summed ending loss, acc_norm = lowest mean) or the mean token "
        "loss and perplexity on prepared shards or a text file. Under torchrun the work is split across ranks.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--task", choices=("hellaswag", "loss"), default="hellaswag")
    p.add_argument("--data", metavar="PATH", help="hellaswag: a hellaswag_val.jsonl (default: download it "
                   "into the cache); loss: a prepared data directory or a text file (required)")
    p.add_argument("--split", default="val", help="loss on a data directory: which split (default: val)")
    p.add_argument("--limit", type=int, metavar="N", help="hellaswag: only the first N examples")
    p.add_argument("--max-tokens", type=int, metavar="N", help="loss: only the first N target tokens")
    p.add_argument("--batch-size", type=int, default=8,
                   help="hellaswag: examples per forward pass (x 4 endings); loss: windows per forward pass")
    p.add_argument("--seq-len", type=int, help="loss: window length (default: the model's context)")
    p.add_argument("--stride", type=int, help="loss: new targets per window (default: --seq-len, "
                   "non-overlapping windows; smaller gives each token more context)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: auto)")
    p.add_argument("--dtype", default="float32",
                   help="autocast precision of the forward pass: float32, bfloat16, float16 (default: float32)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a sentence")
    p.set_defaults(run=run_eval)


def run_eval(args) -> int:
    import json

    from gpt2lab.runtime.device import resolve_device, resolve_dtype
    from gpt2lab.eval import hellaswag, loss
    from gpt2lab.model.gpt import load_model

    # float32 runs without autocast (gpt2lab.runtime.device.autocast)
    device, autocast_dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    # Read the data before the (slower) model load, so a bad file or an offline download fails at once.
    if args.task == "hellaswag":
        examples = hellaswag.load_examples(args.data, limit=args.limit)
    elif args.data is None:
        raise GPT2LabError("--task loss needs --data: a prepared data directory or a text file")
    else:
        streams = loss.load_streams(args.data, split=args.split)
    ctx = distributed.setup(device)
    device = distributed.process_device(device, ctx)
    model = load_model(args.model, device=device)
    if args.task == "hellaswag":
        result = hellaswag.evaluate(model, examples, args.batch_size, device, autocast_dtype)
        sentence = (f"hellaswag: acc {result.acc:.4f}  acc_norm {result.acc_norm:.4f}  n {result.n}  "
                    f"({result.examples_per_s:.1f} examples/s, {result.seconds:.1f} s)")
    else:
        result = loss.evaluate_loss(model, streams, args.seq_len, args.batch_size, args.stride, device,
                                    autocast_dtype, args.max_tokens)
        sentence = (f"loss: {result.loss:.4f}  perplexity {result.perplexity:.2f}  tokens {result.tokens}  "
                    f"({result.tokens_per_s:.0f} tokens/s, {result.seconds:.1f} s)")
    if ctx.is_main:
        record = {"task": args.task, "model": str(args.model), "data": args.data, **result.to_dict()}
        print(json.dumps(record) if args.json else sentence, flush=True)
    return 0

# --------------------------------------------------------------------------------------------- inspect

MODEL_HELP = "gpt2, gpt2-medium, gpt2-large, gpt2-xl, a Hugging Face hub id, a local HF directory, or a gpt2lab run"


def add_inspect_command(commands) -> None:
    p = commands.add_parser(
        "inspect",
        help="print a model's config, weight table and parameter counts; optionally plot its weights",
        description="Print the config, every state-dict key with shape, dtype and parameter count, and the "
        "totals (all / embedding / non-embedding). With --plots DIR, also write PNGs of the position embeddings "
        "(wpe) as an image, a few wpe channels as curves, and a 300x300 block of layer 0's attention weight.",
    )
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--plots", metavar="DIR", help="write the PNG plots into DIR (created if missing)")
    p.add_argument(
        "--channels", metavar="C", type=int, nargs="+",
        help="wpe channels to draw as curves (default: 150 200 250, or three spread evenly in a small model)",
    )
    p.set_defaults(run=run_inspect)


def run_inspect(args) -> int:
    from gpt2lab.storage.atomic import writable_directory
    from gpt2lab.model.gpt import load_model
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


# --------------------------------------------------------------------------------------------- sample

DEFAULT_PROMPT = "Hello, I'm a language model,"


def add_sample_command(commands) -> None:
    p = commands.add_parser(
        "sample",
        help="continue a prompt with text sampled from a model (KV cache, streaming, seeded)",
        description="Sample continuations of a prompt. One sample streams to the terminal as it is generated; "
        "several are generated --batch-size at a time, each batch printed as soon as it is done, so memory does not "
        "grow with --num-samples. Generation stops at <|endoftext|>. "
        "The prompt comes from --prompt, --prompt-file, or standard input when it is piped "
        f"(`echo Hi | gpt2lab sample gpt2`); with none of these it is {DEFAULT_PROMPT!r}. An empty prompt "
        "samples unconditionally (from <|endoftext|>); one longer than the model's context is cropped from the "
        "left, with a warning. Sample i depends only on --seed and i, not on --num-samples or --batch-size (barring "
        "a rare near-tie that float rounding, which differs between batch shapes, tips): the same seed gives the "
        "same samples on the same device.",
    )
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--prompt", help=f"text to continue (default {DEFAULT_PROMPT!r}; '' = unconditional)")
    p.add_argument(
        "--prompt-file", metavar="FILE",
        help="read the prompt from FILE, UTF-8 ('-' = standard input); one trailing newline is dropped",
    )
    p.add_argument("--num-samples", type=int, default=5, metavar="N", help="samples to generate (default 5)")
    p.add_argument("--batch-size", type=int, default=8, metavar="B",
                   help="samples generated together: more is faster per sample, and takes more memory (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=30, metavar="N", help="tokens per sample (default 30)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    p.add_argument("--temperature", type=float, default=1.0, metavar="T", help="softmax temperature; 0 = greedy (default 1.0)")
    p.add_argument(
        "--top-k", type=_int_or_none, default=50, metavar="K",
        help="sample among the K most likely tokens; 'none' = no limit (default 50)",
    )
    p.add_argument(
        "--top-p", type=float, default=None, metavar="P",
        help="nucleus sampling: among the fewest most likely tokens whose probability reaches P, 0 < P <= 1 (default off)",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (default auto: cuda, then mps, then cpu)")
    p.add_argument("--dtype", default="auto",
                   help="auto | float32 | bfloat16 | float16 (default auto: bfloat16 where it decodes faster, on CUDA "
                   "GPUs and CPUs with native bf16, else float32)")
    p.set_defaults(run=run_sample)


def _int_or_none(text: str):
    if text.lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'none', got {text!r}") from None


def run_sample(args) -> int:
    import time

    import torch

    from gpt2lab.runtime import memory
    from gpt2lab.runtime.device import decoding_dtype, resolve_device
    from gpt2lab.sampling.decode import check_sampling_settings, generate, generate_stream, sample_seed
    from gpt2lab.hf.format import read_config
    from gpt2lab.model.gpt import load_model
    from gpt2lab.hf.resolve import resolve_model_dir
    from gpt2lab.tokenizer import get_tokenizer

    # Everything that can be checked without the model first: a typo should not cost a model load.
    check_sampling_settings(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    for flag in ("num_samples", "batch_size"):
        if getattr(args, flag) <= 0:
            raise GPT2LabError(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(args, flag)}")
    device = resolve_device(args.device)
    dtype = decoding_dtype(args.dtype, device)
    prompt = read_prompt(args.prompt, args.prompt_file)
    tokenizer = get_tokenizer()

    directory = resolve_model_dir(args.model)
    config = read_config(directory)  # config.json alone: what the checks need, before the weights
    if config.vocab_size < tokenizer.n_vocab:
        raise GPT2LabError(
            f"{args.model} has a vocabulary of {config.vocab_size} tokens, fewer than GPT-2's "
            f"{tokenizer.n_vocab}; `sample` needs a model trained on the GPT-2 tokenizer"
        )
    tokens = tokenizer.encode(prompt) or [tokenizer.eot_token]  # empty prompt: unconditional
    if len(tokens) > config.block_size:
        print(
            f"warning: the prompt is {len(tokens)} tokens, longer than the model's context of {config.block_size}; "
            f"using its last {config.block_size} tokens",
            file=sys.stderr,
        )
        tokens = tokens[-config.block_size :]
    batch_size = min(args.batch_size, args.num_samples)
    cached = min(len(tokens) + args.max_new_tokens, config.block_size)
    needed = memory.forward_bytes(config, batch_size, len(tokens), scored=1, cached=cached,
                                  bytes_per_value=dtype.itemsize)
    memory.check_fits(f"--batch-size {args.batch_size}", needed, device, step="to sample one batch")
    model = load_model(directory, device=device, dtype=dtype)
    prompt_text = tokenizer.decode(tokens) if prompt else ""

    settings = dict(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        stop_token=tokenizer.eot_token, vocab_size=tokenizer.n_vocab,
    )
    out = sys.stdout
    if hasattr(out, "reconfigure"):  # a terminal that cannot show a character gets '?', not a crash
        out.reconfigure(errors="replace")
    start = time.perf_counter()
    if args.num_samples == 1:
        out.write(prompt_text)
        out.flush()
        idx = torch.tensor([tokens], dtype=torch.long, device=device)
        steps = generate_stream(model, idx, seed=args.seed, **settings)
        count = print_stream((step[0].item() for step in steps), tokenizer, out)
    else:
        count = 0
        for first in range(0, args.num_samples, batch_size):
            numbers = range(first, min(first + batch_size, args.num_samples))
            idx = torch.tensor([tokens] * len(numbers), dtype=torch.long, device=device)
            # each sample its own seed: sample i is the same whichever batch it lands in
            seeds = [sample_seed(args.seed, i) for i in numbers]
            rows = generate(model, idx, seed=seeds, **settings)[:, len(tokens) :].tolist()
            for i, row in zip(numbers, rows):
                row = row[: row.index(tokenizer.eot_token)] if tokenizer.eot_token in row else row
                count += len(row)
                out.write(f"{'-' * 20} sample {i + 1} of {args.num_samples} {'-' * 20}\n")
                out.write(prompt_text + tokenizer.decode(row) + "\n")
            out.flush()  # this batch is done: show it now rather than after the last one
    out.flush()
    seconds = time.perf_counter() - start
    dtype_name = str(dtype).removeprefix("torch.") + (" (auto)" if args.dtype == "auto" else "")
    print(f"[{count} new tokens in {seconds:.1f} s, {count / seconds:.1f} tokens/s, {dtype_name}]", file=sys.stderr)
    return 0


def print_stream(token_ids, tokenizer, out) -> int:
    """Write the text of each token as it arrives, up to <|endoftext|>; returns the number of tokens written.

    A character can be split across tokens (the UTF-8 bytes of an emoji, say): the incremental decoder holds
    incomplete bytes back until their character is complete, so only whole characters reach the terminal."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    count = 0
    for token in token_ids:
        if token == tokenizer.eot_token:
            break
        count += 1
        text = decoder.decode(tokenizer.decode_bytes([token]))
        if text:
            out.write(text)
            out.flush()
    out.write(decoder.decode(b"", final=True) + "\n")  # bytes still incomplete at the end become U+FFFD
    return count


def read_prompt(prompt: str | None, prompt_file: str | None) -> str:
    """--prompt, else --prompt-file ('-' = stdin), else piped stdin, else the default prompt."""
    if prompt is not None and prompt_file is not None:
        raise GPT2LabError("give either --prompt or --prompt-file, not both")
    if prompt is not None:
        return prompt
    if prompt_file == "-" or (prompt_file is None and _stdin_is_piped()):
        return _drop_final_newline(sys.stdin.read())
    if prompt_file is None:
        return DEFAULT_PROMPT
    path = Path(prompt_file).expanduser()
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise GPT2LabError(f"prompt file {path} {what}; pass a UTF-8 text file, or '-' for standard input")
    try:
        return _drop_final_newline(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise GPT2LabError(f"prompt file {path} is not UTF-8 text; convert it (e.g. with iconv)") from None


def _stdin_is_piped() -> bool:
    # A pipe or a redirected file, not a terminal and not /dev/null (cron, CI), which would read as "".
    import os
    import stat

    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (AttributeError, OSError, ValueError):  # no real stdin (pytest capture, closed)
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


def _drop_final_newline(text: str) -> str:
    return text[:-1] if text.endswith("\n") else text




# --------------------------------------------------------------------------------------------- train


def add_train_command(commands) -> None:
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
    p.add_argument("--list-keys", action="store_true", help="print every config key with its value and exit")
    plan = p.add_argument_group("planning (--dry-run: estimates, nothing is trained or written)")
    plan.add_argument("--dry-run", action="store_true",
                      help="print the plan (parameters, batch split, epochs, memory per device and whether it fits, "
                      "time, checkpoint disk) for the resolved config and exit; --out is optional")
    plan.add_argument("--json", action="store_true", help="with --dry-run: the plan as one JSON object")
    plan.add_argument("--assume-mfu", type=float, metavar="FRACTION",
                      help="with --dry-run: model FLOPs utilisation to assume for the time (default: 0.35 on GPUs, 0.4 on "
                      "CPUs; the plan names its source)")
    plan.add_argument("--plan-device", metavar="NAME",
                      help="with --dry-run: plan for a GPU this machine does not have, from published specs: "
                      "h100, h100-pcie, h200, a100, a100-40gb, l40s, a10, l4, rtx4090, rtx3090")
    plan.add_argument("--plan-gpus", type=int, metavar="N",
                      help="with --dry-run: the number of processes (GPUs) to plan for (default: torchrun's "
                      "WORLD_SIZE, else 1)")
    p.set_defaults(run=run_train, takes_config_flags=True)


def run_train(args) -> int:
    from gpt2lab.storage.run_directory import RunDirectory
    from gpt2lab.train.config import command_line_overrides, read_run_config, resolve_config, to_toml
    from gpt2lab.train.trainer import train

    base = None
    if args.resume and not (args.preset or args.config) and args.out and RunDirectory(args.out).config_file.is_file():
        base = read_run_config(args.out)  # `--resume` alone: continue with the run's own config
    shortcuts = {"model.init": args.init, "schedule.max_steps": args.steps, "runtime.device": args.device}
    overrides = command_line_overrides(args.set, args.config_flags, shortcuts)
    config = resolve_config(args.preset, args.config, overrides, base=base)
    if args.list_keys:
        print(to_toml(config), end="")
        return 0
    if args.dry_run:
        return run_train_plan(args, config)
    planning = [flag for flag, given in (("--json", args.json), ("--assume-mfu", args.assume_mfu is not None),
                                         ("--plan-device", args.plan_device), ("--plan-gpus", args.plan_gpus)) if given]
    if planning:
        raise GPT2LabError(f"{planning[0]} only applies to a plan; add --dry-run")
    if not args.out:
        raise GPT2LabError("--out RUN_DIR is required: the directory for config, metrics, samples and checkpoints")
    result = train(config, args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    return result.exit_code


def run_train_plan(args, config) -> int:
    """`gpt2lab train ... --dry-run`: the plan for the resolved config; nothing trained, nothing written."""
    import dataclasses
    import json

    from gpt2lab.train import plan

    if args.assume_mfu is not None and not 0 < args.assume_mfu <= 1:
        raise GPT2LabError(f"--assume-mfu must be a fraction in (0, 1], e.g. 0.4 for 40 %; got {args.assume_mfu}")
    if args.plan_gpus is not None and args.plan_gpus < 1:
        raise GPT2LabError(f"--plan-gpus must be at least 1, got {args.plan_gpus}")
    if int(os.environ.get("RANK", 0)) != 0:
        return 0  # under torchrun every process would plan the same run: rank 0 says it
    world = args.plan_gpus or int(os.environ.get("WORLD_SIZE", 1))
    if args.plan_device and args.plan_device.lower() != "cpu":
        device = plan.planned_device(args.plan_device, config.runtime.precision)
    else:
        if args.plan_device:  # "cpu": this machine's CPU, whatever runtime.device says
            config = dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, device="cpu"))
        device = plan.this_device(config)
    result = plan.make_plan(config, device, world, args.assume_mfu)
    print(json.dumps(result.to_json()) if args.json else plan.format_plan(result))
    return 0


# --------------------------------------------------------------------------------------------- plot


def add_plot_command(commands) -> None:
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
    p.set_defaults(run=run_plot)


def run_plot(args) -> int:
    from gpt2lab.tools.plot import plot_runs

    out = args.out or str(Path(args.runs[0]) / "loss.png")
    path = plot_runs(args.runs, out, baselines=not args.no_baselines, x=args.x, train=not args.val_only)
    print(f"wrote {path}")
    return 0


# --------------------------------------------------------------------------------------------- bench


def _csv(kind):
    def parse(text: str):
        try:
            return [kind(part) for part in text.split(",") if part]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, got {text!r}") from None

    return parse


def add_bench_command(commands) -> None:
    p = commands.add_parser(
        "bench",
        help="measure gpt2lab against transformers / raw tiktoken, side by side in one process",
        description="Run our implementation and the alternative alternately on the same config, dtype and "
        "inputs (warm-up excluded, several repetitions) and print median tokens/s, ms per iteration, the ratio "
        "ours/theirs, peak memory and, for training, the fraction of the measured matmul peak. Needs "
        "transformers (pip install 'gpt2lab[bench]') except for --no-compare, prepare and serve (which compares "
        "concurrent requests to one-by-one ones, and needs the serve extra).",
    )
    p.add_argument("mode", choices=["train", "generate", "prepare", "serve"])
    p.add_argument("--model", default="gpt2", choices=["gpt2", "tiny"],
                   help="model shape, random weights (default gpt2 = 124M; tiny = a 2-layer smoke test)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|mps (default auto)")
    p.add_argument("--dtypes", type=_csv(str), default=None,
                   help="comma-separated dtypes to run ours (and, for train, theirs) in; default float32, "
                   "plus bfloat16 where the device computes it natively (serve: the first one only)")
    p.add_argument("--batch-size", type=int, default=4, help="train: micro-batch size (default 4)")
    p.add_argument("--seq-len", type=int, default=256, help="train: sequence length (default 256)")
    p.add_argument("--iters", type=int, default=3, help="train: timed steps per repetition (default 3)")
    p.add_argument("--batch-sizes", type=_csv(int), default=[1, 8], help="generate: batch sizes (default 1,8)")
    p.add_argument("--new-tokens", type=int, default=256, help="generate, serve: tokens per sequence (default 256)")
    p.add_argument("--clients", type=int, default=8,
                   help="serve: requests sent at once, compared with the same requests one by one (default 8)")
    p.add_argument("--no-cache-baseline", action="store_true",
                   help="generate: also time the loop without a KV cache (recompute the context every token; slow)")
    p.add_argument("--text-repeat", type=int, default=2,
                   help="prepare: how many copies of the Shakespeare corpus to tokenise (default 2, ~10 MB)")
    p.add_argument("--repeats", type=int, default=3, help="repetitions, alternating implementations (default 3)")
    p.add_argument("--no-compare", action="store_true", help="measure gpt2lab only")
    p.add_argument("--json", metavar="FILE", help="also write the full results as JSON to FILE")
    p.set_defaults(run=run_bench)


def run_bench(args) -> int:
    from gpt2lab.tools import bench
    from gpt2lab.runtime import memory
    from gpt2lab.storage.atomic import writable_file
    from gpt2lab.runtime.device import keep_freed_memory, native_dtypes, resolve_device

    for flag in ("batch_size", "seq_len", "iters", "new_tokens", "text_repeat", "repeats", "clients"):
        if getattr(args, flag) < 1:
            raise GPT2LabError(f"--{flag.replace('_', '-')} must be at least 1")
    if any(b < 1 for b in args.batch_sizes):
        raise GPT2LabError("--batch-sizes must all be at least 1")
    if args.json:  # an unwritable --json fails now, not after minutes of measuring
        writable_file(args.json)
    device = resolve_device(args.device)
    if device.type == "cpu":
        keep_freed_memory()  # as `gpt2lab train` does; it is process-wide, so both sides get it
    dtypes = args.dtypes or native_dtypes(device)
    config = bench.BENCH_CONFIGS[args.model]
    if args.mode == "train":
        if args.seq_len > config.block_size:
            raise GPT2LabError(f"--seq-len {args.seq_len} is longer than the {args.model} context of {config.block_size}")
        report = bench.bench_train(config, args.batch_size, args.seq_len, device, dtypes, args.iters,
                                   repeats=args.repeats, compare=not args.no_compare)
    elif args.mode == "serve":
        report = bench.bench_serve(config, clients=args.clients, new_tokens=args.new_tokens, device=device,
                                   dtype=dtypes[0], repeats=args.repeats)
    elif args.mode == "generate":
        report = bench.bench_generate(config, args.batch_sizes, args.new_tokens, device=device, dtypes=dtypes,
                                      repeats=args.repeats, compare=not args.no_compare,
                                      recompute=args.no_cache_baseline)
    else:
        from gpt2lab.data.shakespeare import shakespeare_documents

        texts = [doc.text for doc in shakespeare_documents()]
        # the copies below share their strings, but each copy is tokenised into token lists of its own
        needed = memory.token_list_bytes(sum(map(len, texts)) * args.text_repeat)
        memory.check_fits(f"--text-repeat {args.text_repeat}", needed, "cpu", "for raw tiktoken's token lists")
        texts = texts * args.text_repeat
        report = bench.bench_prepare(texts, repeats=args.repeats)
    print(bench.format_table(report))
    if args.json:
        bench.write_json(report, args.json)
        print(f"wrote {args.json}")
    return 0


# --------------------------------------------------------------------------------------------- serve


def add_serve_command(commands) -> None:
    p = commands.add_parser(
        "serve", help="serve models over an OpenAI-compatible completions API, with a playground page",
        description="Serve one or more models over HTTP: OpenAI's completions API (GET /v1/models, POST "
        "/v1/completions, streaming included; top_k as an extension), GET /health, and a playground page at /. "
        "Concurrent requests are batched together. Each MODEL is served under its own name, or NAME=MODEL. "
        "Listens on 127.0.0.1 (this machine only) unless --host says otherwise. "
        "Needs the serve extra: pip install 'gpt2lab[serve]'.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help=MODEL_HELP + "; NAME=MODEL serves it as NAME")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 = every "
                   "network: anyone who can reach it can use it)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (default auto)")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16 (default auto, as for "
                   "`gpt2lab sample`: bfloat16 where it decodes faster, else float32)")
    p.add_argument("--batch-size", type=int, default=8, metavar="B",
                   help="completions each model generates together; each holds a KV cache for the whole context "
                   "(default 8)")
    p.add_argument("--max-tokens", type=int, default=256, metavar="N", help="the most max_tokens a request may "
                   "ask for (default 256)")
    p.add_argument("--max-prompt-tokens", type=int, metavar="N", help="longest prompt accepted, in tokens "
                   "(default: the model's context minus one)")
    p.add_argument("--max-n", type=int, default=8, metavar="N", help="completions per request, prompts x n "
                   "(default 8)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, metavar="N",
                   help="largest request body (default 1 MiB)")
    p.add_argument("--max-concurrent-requests", type=int, default=32, metavar="N",
                   help="requests accepted at once, running or waiting; more get HTTP 429 (default 32)")
    p.set_defaults(run=run_serve)


def run_serve(args) -> int:
    from gpt2lab.serve.config import Limits, ServeConfig
    from gpt2lab.serve.server import serve

    limits = Limits(max_tokens=args.max_tokens, max_prompt_tokens=args.max_prompt_tokens, max_n=args.max_n,
                    max_body_bytes=args.max_body_bytes, max_concurrent_requests=args.max_concurrent_requests)
    config = ServeConfig(models=args.models, host=args.host, port=args.port, device=args.device, dtype=args.dtype,
                         batch_size=args.batch_size, limits=limits)
    return serve(config)


# The subcommands, in the order `gpt2lab --help` lists them. Each adds its parser (flags, and `run` set to
# the function that executes it).
COMMANDS = [
    add_inspect_command, add_sample_command, add_prepare_command, add_train_command, add_eval_command,
    add_serve_command, add_plot_command, add_bench_command,
]
