"""`gpt2lab bench`: our implementation and the one users would otherwise use, side by side, in one process.

Every mode alternates the two implementations (ours, theirs, ours, theirs, ...) over the same inputs, drops
warm-up iterations, and reports medians, so that load from elsewhere on the machine hits both alike.
- train:    GPT forward + backward + clip + AdamW  vs  transformers.GPT2LMHeadModel, same weights, batch and step;
- generate: our KV-cached sampler                  vs  transformers generate(use_cache=True, do_sample, top_k=50);
- prepare:  `gpt2lab prepare`'s tokenizer path     vs  raw tiktoken encode_ordinary_batch on all cores;
- serve:    `gpt2lab serve` over HTTP, N clients at once  vs  the same N requests one after another
            (aggregate tokens/s: what batching concurrent requests buys).
transformers is imported only here (and in tests): it is a benchmark dependency, never a runtime one.
"""

from gpt2lab.tools.bench.common import BENCH_CONFIGS, format_table, write_json
from gpt2lab.tools.bench.generate import bench_generate
from gpt2lab.tools.bench.prepare import bench_prepare
from gpt2lab.tools.bench.serve import bench_serve
from gpt2lab.tools.bench.train import bench_train

__all__ = ["BENCH_CONFIGS", "bench_generate", "bench_prepare", "bench_serve", "bench_train", "format_table",
           "write_json"]
