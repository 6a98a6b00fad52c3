"""A Document: one text with its name and optional split, the unit every source yields and `prepare` tokenizes.

Its own module so that sources.py (which picks the reader for each SOURCE, the built-in Shakespeare corpus
included) and shakespeare.py (one such reader) both depend on it, and not on each other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Document:
    text: str
    name: str  # where it came from, for messages ("file.jsonl:12", a play's title, ...)
    split: str | None = None  # a source's own train/val choice (Shakespeare's held-out plays), else None
