"""Sampling speed: gpt2lab (KV cache, fp32 and bf16) vs transformers generate vs no-cache recomputation.

All in one process on the same random GPT-2 124M weights, batch 1, top-k 50 sampling. Runs alternate
(ours, transformers, ours bf16, ...) so that other load on the machine hits every method alike; the table shows
the median tokens/s of each and the ratios. Needs transformers (pip install -e .[bench]).

    python scripts/bench_sample.py --new-tokens 256 --rounds 3
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


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


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
    args = parser.parse_args()

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

    speeds = {name: [] for name in methods}
    for r in range(args.rounds):
        for name, fn in methods.items():
            speeds[name].append(n / timed(fn))
        print(f"round {r + 1}: " + ", ".join(f"{name} {s[-1]:.1f}" for name, s in speeds.items()), flush=True)
    if args.no_cache_rounds:
        name = "gpt2lab fp32 no cache (recompute)"
        speeds[name] = []
        for _ in range(args.no_cache_rounds):
            generator = torch.Generator().manual_seed(1)
            speeds[name].append(n / timed(lambda: no_cache_generate(ours, idx, n, generator)))
        # the cached run right after it, so that this ratio too compares like with like
        speeds["gpt2lab fp32 (KV cache)"].append(n / timed(methods["gpt2lab fp32 (KV cache)"]))
        print(f"no cache: {speeds[name][-1]:.1f}, cached right after: {speeds['gpt2lab fp32 (KV cache)'][-1]:.1f}")

    hf_speed = statistics.median(speeds["transformers fp32 (use_cache=True)"])
    print(f"\n| method | tokens/s (median) | vs transformers fp32 |\n|---|---:|---:|")
    for name, s in speeds.items():
        med = statistics.median(s)
        print(f"| {name} | {med:.1f} | {med / hf_speed:.2f}x |")


if __name__ == "__main__":
    main()
