"""Helpers for the evaluation tests: HellaSwag files in the official format (synthetic rows, a fixture, bad files),
a short text for the loss, and the one-line error check."""

from __future__ import annotations

import json
import random

import pytest

WORDS = (
    "the a man woman dog child runs jumps into water quickly slowly ball kitchen then and of over bright "
    "knife bowl lake rope paints fence snow skis camera smiles carefully"
).split()


def synthetic_rows(n=24, seed=0):
    """Examples in the official hellaswag_val.jsonl format, of varied context and ending lengths."""
    rng = random.Random(seed)

    def words(lo, hi):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    rows = []
    for i in range(n):
        ctx_a, ctx_b = words(2, 9).capitalize() + ".", words(1, 4)
        rows.append(dict(
            ind=i, activity_label=rng.choice(["Cooking", "Skiing"]), ctx_a=ctx_a, ctx_b=ctx_b,
            ctx=f"{ctx_a} {ctx_b}", endings=[words(1, 8) + "." for _ in range(4)],
            source_id=f"synthetic~{i}", split="val", split_type="indomain", label=rng.randint(0, 3),
        ))
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def hellaswag_file(tmp_path):
    return write_jsonl(tmp_path / "hellaswag_val.jsonl", synthetic_rows())


def _bad(tmp_path, rows_or_text):
    path = tmp_path / "bad.jsonl"
    if isinstance(rows_or_text, str):
        path.write_text(rows_or_text)
    else:
        write_jsonl(path, rows_or_text)
    return path


def _assert_one_line_error(proc, *needles):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


GOOD = synthetic_rows(3)
TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, "
    "it was the season of Darkness, it was the spring of hope, it was the winter of despair.\n"
)
