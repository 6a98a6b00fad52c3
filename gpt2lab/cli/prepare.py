"""`gpt2lab prepare`: tokenise a corpus into GPT-2 token shards for training."""

from __future__ import annotations

import argparse
import sys


def add_command(commands):
    p = commands.add_parser("prepare", help="tokenise a corpus into GPT-2 token shards for training",
                            description="Tokenise documents into uint16 GPT-2 token shards + manifest.json. SOURCE: "
                            ".txt/.jsonl/.json/.parquet files, directories or globs; hf:NAME[:CONFIG]; shakespeare.")
    p.add_argument("sources", nargs="+", metavar="SOURCE")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--shard-size", type=token_count, default=100_000_000, help="tokens per shard (default 100M)")
    split = p.add_mutually_exclusive_group()
    split.add_argument("--val-fraction", type=float, help="every (1/F)-th document goes to val (default 0.01; "
                       "shakespeare holds out whole plays)")
    split.add_argument("--val-docs", type=int, help="the first N documents go to val")
    p.add_argument("--text-field", default="text", help="JSON field / parquet column with the text (default text)")
    p.add_argument("--hf-split", default="train", help="split of an hf: dataset (default train)")
    p.add_argument("--max-tokens", type=token_count, help="stop after this many tokens (a prefix)")
    p.add_argument("--strict", action="store_true", help="malformed JSONL records are errors, not skipped")
    p.add_argument("--overwrite", action="store_true", help="replace a different dataset in --out")
    p.add_argument("--threads", type=int, help="tokeniser threads (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)
    return p


def token_count(text: str) -> int:
    """'100M', '2.5B', '50k' or a plain integer."""
    scale = {"k": 10**3, "m": 10**6, "b": 10**9}.get(text[-1:].lower(), 1)
    try:
        value = float(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a token count (e.g. 100M, 2.5B, 50000)") from None
    if value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of tokens")
    return int(value)


def run(args) -> int:
    from gpt2lab.data import PrepareConfig, prepare

    config = PrepareConfig(
        sources=args.sources, out=args.out, shard_size=args.shard_size, val_fraction=args.val_fraction,
        val_docs=args.val_docs, text_field=args.text_field, hf_split=args.hf_split, max_tokens=args.max_tokens,
        strict=args.strict, overwrite=args.overwrite, threads=args.threads, progress=not args.no_progress,
    )
    prepare(config, log=lambda line: print(line, file=sys.stderr if line.startswith("warning") else sys.stdout))
    return 0
