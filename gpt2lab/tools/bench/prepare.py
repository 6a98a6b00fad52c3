"""`gpt2lab bench prepare`: `gpt2lab prepare`'s pipeline (tokenise + write shards) against raw tiktoken."""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path

import torch

from gpt2lab.tools.bench.common import Row, measure, report


def bench_prepare(texts: list[str], repeats: int = 3, threads: int | None = None) -> dict:
    """`gpt2lab prepare`'s pipeline (tokenise + write shards) vs raw tiktoken, same texts, all cores."""
    from gpt2lab.data.prepare import PrepareConfig, prepare_documents
    from gpt2lab.data.document import Document
    from gpt2lab.tokenizer import get_tokenizer

    threads = threads or os.cpu_count() or 1
    encoding = get_tokenizer().encoding

    def raw():
        encoding.encode_ordinary_batch(texts, num_threads=threads)

    def ours():
        with tempfile.TemporaryDirectory() as tmp:
            config = PrepareConfig(["<memory>"], tmp, val_docs=0, threads=threads, progress=False)
            documents = (Document(text, f"#{i}") for i, text in enumerate(texts))
            prepare_documents(documents, Path(tmp), config, {"sources": ["<memory>"], "args": {}}, log=lambda *_: None)

    fns = {("gpt2lab", "uint16"): ours, ("tiktoken", "int"): raw}
    times, peaks = measure(fns, torch.device("cpu"), repeats=repeats)
    n_tokens = sum(len(t) + 1 for t in encoding.encode_ordinary_batch(texts, num_threads=threads))  # + EOT each
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    rows = []
    for (impl, dtype), ts in times.items():
        median = statistics.median(ts)
        rows.append(Row(impl, dtype, len(texts), n_tokens / median, median * 1e3, peaks[(impl, dtype)],
                        {"mb_per_s": n_bytes / median / 1e6}))
    return report("prepare", torch.device("cpu"), rows,
                   {"documents": len(texts), "bytes": n_bytes, "tokens": n_tokens, "threads": threads})

