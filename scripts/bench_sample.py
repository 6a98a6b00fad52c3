"""Sampling speed: gpt2lab (KV cache, fp32 and bf16) vs transformers generate vs no-cache recomputation.

All in one process on the same random GPT-2 124M weights, batch 1, top-k 50 sampling. Runs alternate
(ours, transformers, ours bf16, ...) so that other load on the machine hits every method alike; the table shows
the median tokens/s of each and the ratios, by wall-clock time and by CPU time of this process. On a machine
shared with other jobs, CPU time with --threads 1 is the steadier measure (wall time also counts the time other
processes held the core). Needs transformers (pip install -e .[bench]).

    python scripts/bench_sample.py --new-tokens 256 --rounds 3 [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from gpt2lab import GPT
from gpt2lab.generate import sample_next

PROMPT = [15496, 11, 314, 1101, 257, 3303, 2746, 11]  # "Hello, I'm a language model,"


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads)"""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def no_cache_generate(model, idx, new_tokens, generator):
    """The anchors' loop: recompute the whole (cropped) context for every token."""
    with torch.no_grad():
        for _ in range(new_tokens):
            logits, _ = model(idx[:, -model.config.block_size :], last_logits_only=True)
            idx = torch.cat([idx, sample_next(logits[:, -1].float(), top_k=50, generator=generator)[:, None]], 1)
    return idx


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-cache-rounds", type=int, default=1, help="the slow baseline; 0 skips it")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config()).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = GPT.from_pretrained(tmp)
        ours_bf16 = GPT.from_pretrained(tmp, dtype=torch.bfloat16)
    idx = torch.tensor([PROMPT])
    n = args.new_tokens

    def run_hf():
        with torch.no_grad():
            out = hf.generate(idx, attention_mask=torch.ones_like(idx), do_sample=True, top_k=50, use_cache=True,
                              max_new_tokens=n, min_new_tokens=n, pad_token_id=50256)
        assert out.size(1) == idx.size(1) + n

    methods = {
        "gpt2lab fp32 (KV cache)": lambda: ours.generate(idx, n, top_k=50, seed=1),
        "transformers fp32 (use_cache=True)": run_hf,
        "gpt2lab bf16 (KV cache)": lambda: ours_bf16.generate(idx, n, top_k=50, seed=1),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {n} new tokens, batch 1, top-k 50")
    # warm-up: first-call allocations, oneDNN kernel selection
    ours.generate(idx, 8, top_k=50, seed=0)
    ours_bf16.generate(idx, 8, top_k=50, seed=0)
    with torch.no_grad():
        hf.generate(idx, attention_mask=torch.ones_like(idx), do_sample=True, max_new_tokens=8, pad_token_id=50256)

    wall = {name: [] for name in methods}  # tokens/s per run
    cpu = {name: [] for name in methods}

    def measure(name, fn):
        w, c = timed(fn)
        wall.setdefault(name, []).append(n / w)
        cpu.setdefault(name, []).append(n / c)
        return f"{name} {n / w:.1f} wall, {n / c:.1f} cpu"

    for r in range(args.rounds):
        print(f"round {r + 1}: " + "; ".join(measure(name, fn) for name, fn in methods.items()), flush=True)
    for _ in range(args.no_cache_rounds):
        generator = torch.Generator().manual_seed(1)
        line = measure("gpt2lab fp32 no cache (recompute)", lambda: no_cache_generate(ours, idx, n, generator))
        # the cached run right after it, so that this ratio too compares like with like
        print(f"{line}; {measure('gpt2lab fp32 (KV cache)', methods['gpt2lab fp32 (KV cache)'])}", flush=True)

    base_wall = statistics.median(wall["transformers fp32 (use_cache=True)"])
    base_cpu = statistics.median(cpu["transformers fp32 (use_cache=True)"])
    print("\n| method | tokens/s wall | vs transformers fp32 | tokens/s CPU time | vs transformers fp32 |")
    print("|---|---:|---:|---:|---:|")
    for name in wall:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"| {name} | {w:.1f} | {w / base_wall:.2f}x | {c:.1f} | {c / base_cpu:.2f}x |")
    print(f"(medians of {args.rounds} alternating rounds; each run = {n} new tokens)")
    if args.no_cache_rounds:
        speedup = lambda t: statistics.median(t["gpt2lab fp32 (KV cache)"]) / statistics.median(  # noqa: E731
            t["gpt2lab fp32 no cache (recompute)"])
        print(f"KV cache speed-up over recomputation: {speedup(wall):.1f}x wall, {speedup(cpu):.1f}x CPU time")


if __name__ == "__main__":
    main()
