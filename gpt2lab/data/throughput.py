"""How fast `prepare` tokenises compared with raw tiktoken on the same text (for `gpt2lab bench` and the README).

Both sides run on the same texts in the same process, alternating, so a machine shared with other work slows
both alike: compare the ratio, not the absolute numbers.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from gpt2lab.data.prepare import PrepareConfig, prepare_documents
from gpt2lab.data.sources import Document
from gpt2lab.tokenizer import get_tokenizer


def prepare_throughput(texts: list[str], repeats: int = 3, threads: int | None = None) -> dict:
    """Best-of-`repeats` tokens/s of prepare's pipeline (tokenise + write shards) and of raw
    `encode_ordinary_batch` on all cores, over the same `texts`; plus their ratio."""
    threads = threads or os.cpu_count() or 1
    encoding = get_tokenizer().encoding
    tokens = sum(len(t) + 1 for t in encoding.encode_ordinary_batch(texts, num_threads=threads))  # warm-up
    raw, ours = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        encoding.encode_ordinary_batch(texts, num_threads=threads)
        raw.append(time.perf_counter() - start)
        with tempfile.TemporaryDirectory() as tmp:
            config = PrepareConfig(["<memory>"], tmp, val_docs=0, threads=threads, progress=False)
            documents = (Document(t, f"#{i}") for i, t in enumerate(texts))
            start = time.perf_counter()
            prepare_documents(documents, Path(tmp), config, {"sources": ["<memory>"], "args": {}}, log=lambda *_: None)
            ours.append(time.perf_counter() - start)
    raw_rate, our_rate = tokens / min(raw), tokens / min(ours)
    return {"tokens": tokens, "megabytes": sum(len(t.encode()) for t in texts) / 1e6, "threads": threads,
            "raw_tokens_per_s": raw_rate, "prepare_tokens_per_s": our_rate, "ratio": our_rate / raw_rate}
