"""GPT-2's tokenizer as Hugging Face files (`vocab.json`, `merges.txt`, `tokenizer_config.json`) for checkpoints.

Why: our checkpoints are HF GPT-2 directories, but without tokenizer files every HF tool (`AutoTokenizer`,
pipelines, lm-evaluation-harness) has to be told `tokenizer=gpt2`, which means the hub. With these three files
next to the weights a checkpoint is self-contained.

How: gpt2lab tokenizes with tiktoken, which stores only `token bytes -> rank`. HF's byte-level BPE wants
  - vocab.json: token -> id, each token's bytes spelled in GPT-2's printable byte alphabet (`bytes_to_unicode`);
  - merges.txt: the pair merged into each multi-byte token, in rank order. tiktoken does not store the pair, but
    BPE recovers it: merge the token's bytes with lower-ranked merges only until two parts are left.
That gives GPT-2's 50,257 tokens and 50,000 merges, and HF's tokenizer then encodes exactly as tiktoken does
(tests/unit/hf/test_tokenizer_files.py). Deriving takes seconds of pure Python, so it happens once per machine, cached
in gpt2lab's cache directory; each save copies the two cached files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from gpt2lab.storage.atomic import atomic_path, atomic_write_text
from gpt2lab.storage.cache import cache_dir
from gpt2lab.errors import TokenizerError
from gpt2lab.tokenizer import EOT, get_tokenizer

VOCAB, MERGES, CONFIG = "vocab.json", "merges.txt", "tokenizer_config.json"
FILES = (VOCAB, MERGES, CONFIG)
GPT2_VOCAB_SIZE = 50257
CACHE_SUBDIR = "hf-tokenizer-v1"  # bump if the derivation changes, so an old cache is not reused

# Why the cached files could not be made, per cache directory: a training run saving a checkpoint every few
# minutes should not retry a slow failing download (tiktoken, then pip) at each one.
_unavailable: dict[Path, str] = {}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (openai/gpt-2 encoder.py): printable bytes map to themselves,
    the others (control characters, space, ...) to characters from U+0100 on, so every token is visible text."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def derive_vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[str]]:
    """HF's vocab (token text -> id, `<|endoftext|>` included) and merges ("left right", in rank order)."""
    alphabet = bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(alphabet[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()} | {EOT: len(ranks)}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) > 1:  # single bytes are the alphabet, not merges
            left, right = _last_merge(token, rank, ranks)
            merges.append(f"{text(left)} {text(right)}")
    return vocab, merges


def _last_merge(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two parts BPE joins to make `token`: BPE over its bytes with merges ranked below it, until two are left."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        pair_ranks = [ranks.get(a + b, rank) for a, b in zip(parts, parts[1:])]
        best = min(pair_ranks)  # the lowest rank merges first; ties go to the leftmost pair, as in tiktoken
        if best >= rank:
            raise TokenizerError(f"BPE rank file: token {token!r} (rank {rank}) cannot be built from lower ranks")
        i = pair_ranks.index(best)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts[0], parts[1]


def cached_vocab_and_merges() -> Path:
    """The cache directory holding vocab.json + merges.txt, derived on first use; TokenizerError if impossible."""
    cache = cache_dir() / CACHE_SUBDIR
    if (cache / VOCAB).is_file() and (cache / MERGES).is_file():
        return cache
    if cache in _unavailable:
        raise TokenizerError(_unavailable[cache])
    try:
        vocab, merges = derive_vocab_and_merges(get_tokenizer().encoding._mergeable_ranks)
        atomic_write_text(cache / MERGES, "#version: 0.2\n" + "\n".join(merges) + "\n")
        atomic_write_text(cache / VOCAB, json.dumps(vocab, ensure_ascii=False))
    except TokenizerError as e:
        _unavailable[cache] = str(e)
        raise
    except OSError as e:  # a read-only or full cache directory
        _unavailable[cache] = f"cannot write the derived tokenizer files to {cache} ({e})"
        raise TokenizerError(_unavailable[cache]) from None
    return cache


def tokenizer_config(block_size: int) -> dict:
    return {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": block_size,
        "bos_token": EOT,
        "eos_token": EOT,
        "unk_token": EOT,
        "add_prefix_space": False,
        # explicit: some transformers 4.x releases default to True and decode " ," as ","; tiktoken decodes exactly
        "clean_up_tokenization_spaces": False,
    }


def write_tokenizer_files(directory, block_size: int) -> None:
    """Copy the cached vocab.json + merges.txt into `directory` and write tokenizer_config.json, each atomically."""
    source, directory = cached_vocab_and_merges(), Path(directory)
    for name in (VOCAB, MERGES):
        with atomic_path(directory / name) as tmp:
            shutil.copyfile(source / name, tmp)
    atomic_write_text(directory / CONFIG, json.dumps(tokenizer_config(block_size), indent=2) + "\n")
