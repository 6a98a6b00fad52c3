"""The on-disk dataset format: DIR/manifest.json plus raw little-endian uint16 token shards.

    {"format": "gpt2lab-shards/1", "tokenizer": "gpt2", "vocab_size": 50257, "eot_token": 50256,
     "dtype": "uint16", "source": ..., "args": {...},
     "splits": {"train": [{"file": "train_000000.bin", "tokens": N, "documents": D, "sha256": "..."}, ...],
                "val": [...]}}

Every document in a shard starts with <|endoftext|>. The manifest is written last, so a directory without one
is an interrupted `gpt2lab prepare`, never a dataset.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gpt2lab.data.errors import DataError

FORMAT = "gpt2lab-shards/1"
TOKENIZER = "gpt2"
VOCAB_SIZE = 50257
EOT_TOKEN = 50256
DTYPE = "uint16"
MANIFEST = "manifest.json"
STATE = "prepare-state.json"  # progress of an unfinished prepare; removed once the manifest exists
SPLITS = ("train", "val")


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:06d}.bin"


def read_manifest(data_dir) -> dict:
    """The manifest of a complete dataset directory; DataError if missing, incomplete or for another tokenizer."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist; create it with `gpt2lab prepare SOURCE --out {data_dir}`")
    path = data_dir / MANIFEST
    if not path.is_file():
        if (data_dir / STATE).exists() or any(data_dir.glob("*.bin")):
            raise DataError(f"{data_dir} is an unfinished `gpt2lab prepare` (no {MANIFEST}); rerun the same prepare command to finish it")
        raise DataError(f"{data_dir} has no {MANIFEST}; create the dataset with `gpt2lab prepare SOURCE --out {data_dir}`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is unreadable ({e}); rebuild it with `gpt2lab prepare ... --overwrite`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("splits"), dict):
        raise DataError(f"{path} is not a {FORMAT} manifest; rebuild it with `gpt2lab prepare ... --overwrite`")
    found = {k: manifest.get(k) for k in ("tokenizer", "vocab_size", "eot_token", "dtype")}
    expected = {"tokenizer": TOKENIZER, "vocab_size": VOCAB_SIZE, "eot_token": EOT_TOKEN, "dtype": DTYPE}
    if found != expected:
        raise DataError(f"{data_dir} holds tokens of another tokenizer ({found}); gpt2lab needs {expected}: "
                        f"re-prepare the corpus with `gpt2lab prepare`")
    return manifest


def check_vocabulary(data_dir, manifest: dict, model_vocab_size: int, what: str = "model.vocab_size") -> None:
    """Refuse data holding token ids the model has no embedding for: the one place that says so. `what`: the
    model's vocabulary as the caller names it (`model.vocab_size`, "the vocabulary of gpt2")."""
    if manifest["vocab_size"] > model_vocab_size:
        raise DataError(f"{data_dir} has token ids up to {manifest['vocab_size'] - 1} but {what} is {model_vocab_size}; "
                        f"set model.vocab_size={manifest['vocab_size']} or more (50304 is the fast choice)")


def check_token_ids(shard: np.memmap, vocab_size: int) -> None:
    """Refuse a shard holding a token id the vocabulary does not have (a damaged or foreign file: prepare writes
    only ids < vocab_size), naming the shard, rather than an IndexError deep in the embedding. One max over the
    memory map: a fraction of a second for a 100M-token shard, so the loader runs it once per shard it reads."""
    largest = int(shard.max()) if len(shard) else 0
    if largest >= vocab_size:
        raise DataError(f"shard {shard.filename} holds token id {largest}, but the vocabulary of its manifest has "
                        f"{vocab_size} ids; the shard is damaged: rebuild with `gpt2lab prepare ... --overwrite`")


def split_tokens(data_dir, split: str) -> list[np.memmap]:
    """Read-only uint16 memory maps of one split's shards, in manifest order (each opened once, here)."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    if split not in manifest["splits"]:
        raise DataError(f"{data_dir} has no split {split!r}; it has {sorted(manifest['splits'])}")
    maps = []
    for shard in manifest["splits"][split]:
        path = data_dir / shard["file"]
        size = path.stat().st_size if path.is_file() else None
        if size != 2 * shard["tokens"]:
            raise DataError(f"shard {path} is missing or has the wrong size ({size} bytes, manifest says "
                            f"{2 * shard['tokens']}); rebuild with `gpt2lab prepare ... --overwrite`")
        maps.append(np.memmap(path, dtype=np.dtype("<u2"), mode="r"))
    return maps
