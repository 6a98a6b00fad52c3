"""`gpt2lab bench generate`: our KV-cached sampler against transformers' generate(use_cache=True), and
optionally the loop without a cache, with each row's fraction of the read-bandwidth bound."""

from __future__ import annotations

import statistics
from dataclasses import asdict

import torch

from gpt2lab.model.config import GPTConfig
from gpt2lab.model.gpt import GPT
from gpt2lab.runtime import memory
from gpt2lab.runtime.device import resolve_dtype
from gpt2lab.runtime.perf import measure_read_bandwidth
from gpt2lab.tools.bench.common import Row, add_dtype_ratios, copy_model, hf_twin, measure, report, widest


def bench_generate(
    config: GPTConfig,
    batch_sizes=(1, 8),
    new_tokens: int = 256,
    prompt_tokens: int = 8,
    device: torch.device = torch.device("cpu"),
    dtypes=("float32", "bfloat16"),
    repeats: int = 3,
    compare: bool = True,
    recompute: bool = False,
) -> dict:
    """Sampling (top-k 50) of ours and transformers'; with `recompute`, also the anchors' loop without a KV cache
    (the whole cropped context recomputed for every token), to show what the cache buys."""
    from gpt2lab.sampling.decode import generate, sample_next

    def recompute_loop(model, idx):
        generator = torch.Generator(device=idx.device).manual_seed(0)
        for _ in range(new_tokens):
            logits, _ = model(idx[:, -model.config.block_size :], last_logits_only=True)
            idx = torch.cat([idx, sample_next(logits[:, -1].float(), top_k=50, generator=generator)[:, None]], 1)

    largest = max(batch_sizes)
    cached = min(prompt_tokens + new_tokens, config.block_size)
    needed = memory.inference_bytes(config, largest, prompt_tokens, scored=1, cached=cached,
                                    bytes_per_value=widest(dtypes))
    memory.check_fits("batch_sizes", f"{largest} (x {new_tokens} new tokens)", needed, device,
                      "to generate one batch")
    torch.manual_seed(0)
    base = GPT(config).eval()
    models = {d: copy_model(base, "cpu").eval().to(device=device, dtype=resolve_dtype(d)) for d in dtypes}
    hf = hf_twin(base).to(device).eval() if compare else None
    rows = []
    for batch_size in batch_sizes:
        idx = torch.randint(0, min(config.vocab_size, 50257), (batch_size, prompt_tokens), device=device)
        fns = {}
        for d, model in models.items():
            fns[("gpt2lab", d)] = lambda m=model: generate(m, idx, new_tokens, temperature=1.0, top_k=50, seed=0)
        if hf is not None:
            mask = torch.ones_like(idx)

            def hf_generate():
                out = hf.generate(
                    idx, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                    do_sample=True, top_k=50, use_cache=True, pad_token_id=0,
                )
                assert out.shape[1] == prompt_tokens + new_tokens

            fns[("transformers", "float32")] = hf_generate
        if recompute:
            fns[("no-cache loop", dtypes[0])] = lambda m=models[dtypes[0]]: recompute_loop(m, idx)
        with torch.inference_mode():
            times, peaks = measure(fns, device, repeats=repeats)
        for (impl, d), ts in times.items():
            median = statistics.median(ts)
            rows.append(Row(impl, d, batch_size, batch_size * new_tokens / median, median * 1e3 / new_tokens,
                            peaks[(impl, d)]))
    # A decode step reads every weight once, for all the rows of the batch: memory bandwidth bounds it (for
    # small batches; large ones become matmul-bound, so their fraction of this bound falls).
    bandwidth = measure_read_bandwidth(device)
    n_params = base.num_parameters() - base.transformer.wpe.weight.numel()  # one wpe row is read per token
    for row in rows:
        bound = row.batch_size * bandwidth / (n_params * resolve_dtype(row.dtype).itemsize)
        row.extra["bandwidth_bound_tokens_per_s"] = bound
        row.extra["fraction_of_bound"] = row.tokens_per_s / bound
    add_dtype_ratios(rows)
    return report("generate", device, rows, {
        "config": asdict(config), "new_tokens": new_tokens, "prompt_tokens": prompt_tokens,
        "read_bandwidth_gb_s": bandwidth / 1e9,
    })

