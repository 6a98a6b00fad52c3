"""Helpers for the data pipeline tests: a small corpus of awkward texts, and the documents a prepared split holds."""

import numpy as np

from gpt2lab import get_tokenizer
from gpt2lab.data import split_tokens

TEXTS = [
    "First document.\nWith two lines.",
    "naïve café — 東京 🚀 Ωμέγα\n\ttabs  and  spaces",
    "A literal <|endoftext|> inside is ordinary text, not a boundary.",
    "short",
    "The quick brown fox jumps over the lazy dog. " * 20,
    "Last one, without a newline",
]


def quiet(*_):
    pass


def documents_of(data_dir, split):
    """The texts in a split's shards: split on EOT (each document starts with one)."""
    tok = get_tokenizer()
    docs = []
    for shard in split_tokens(data_dir, split):
        tokens = np.asarray(shard).tolist()
        assert tokens[0] == tok.eot_token  # a shard starts with a whole document
        bounds = [i for i, t in enumerate(tokens) if t == tok.eot_token] + [len(tokens)]
        docs += [tok.decode(tokens[a + 1:b]) for a, b in zip(bounds, bounds[1:])]
    return docs


def write_txt_corpus(folder, texts=TEXTS):
    folder.mkdir()
    for i, text in enumerate(texts):
        (folder / f"doc{i:02d}.txt").write_text(text, encoding="utf-8")
    return folder
