"""The `gpt2lab` command: a thin argparse layer over the library. Each subcommand parses its flags, calls
library functions, and prints. A `GPT2LabError` (bad user input) becomes one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys

from gpt2lab.errors import GPT2LabError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage dump
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gpt2lab", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for add_command in COMMANDS:
        add_command(commands)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except GPT2LabError as e:
        print(f"gpt2lab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gpt2lab {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `gpt2lab sample ... | head`
        return 0


def _version() -> str:
    from gpt2lab import __version__

    return f"gpt2lab {__version__}"


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

    import torch

    from gpt2lab import distributed
    from gpt2lab.checkpoint import load_model
    from gpt2lab.device import resolve_device, resolve_dtype
    from gpt2lab.eval import hellaswag, loss

    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    autocast_dtype = None if dtype == torch.float32 else dtype
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
    if ctx.enabled:
        distributed.exit_process(0)  # a torchrun worker must leave this way (see distributed.exit_process)
    return 0


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
    p.set_defaults(run=_run_prepare)


def _run_prepare(args) -> int:
    from gpt2lab.data import PrepareConfig, prepare

    config = PrepareConfig(
        sources=args.sources, out=args.out, shard_size=args.shard_size, val_fraction=args.val_fraction,
        val_docs=args.val_docs, text_field=args.text_field, hf_split=args.hf_split, max_tokens=args.max_tokens,
        strict=args.strict, overwrite=args.overwrite, threads=args.threads, progress=not args.no_progress,
    )
    prepare(config, log=lambda line: print(line, file=sys.stderr if line.startswith("warning") else sys.stdout))
    return 0


# Each entry adds one subcommand (its flags, and `run` set to the function that executes it).
COMMANDS = [add_prepare_command, add_eval_command]
