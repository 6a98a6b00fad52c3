"""What the subcommands share: the MODEL help text and a few argument helpers."""

from __future__ import annotations

import argparse

from gpt2lab.errors import GPT2LabError

MODEL_HELP = "gpt2, gpt2-medium, gpt2-large, gpt2-xl, a Hugging Face hub id, a local HF directory, or a gpt2lab run"


def csv_of(kind):
    """argparse type: comma-separated values of `kind`."""
    def parse(text: str):
        try:
            return [kind(part) for part in text.split(",") if part]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, got {text!r}") from None

    return parse


def positive_flags(args, *names: str) -> None:
    """Refuse a flag below 1, in one line naming it."""
    for name in names:
        if getattr(args, name) < 1:
            raise GPT2LabError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
