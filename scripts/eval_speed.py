"""HellaSwag examples/s, batched vs one example per forward pass (build-nanogpt's way), side by side.

    python scripts/eval_speed.py [--model gpt2 | --shape 4,4,256] [--examples 64] [--batch-size 8] [--rounds 2]

Without --model, a random GPT-2-vocabulary model of the given n_layer,n_head,n_embd is timed on synthetic
examples of HellaSwag-like length (the scores are meaningless; the speed is what is measured). Runs alternate
(batched, one-by-one, build-nanogpt's loop, batched, ...) so that load from other processes hits all alike.
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from gpt2lab import GPT, GPTConfig, load_model
from gpt2lab.eval import hellaswag

WORDS = "the a man woman dog child runs jumps into water then and of over bright knife bowl lake rope".split()


def synthetic_examples(n: int, seed: int = 0) -> list[hellaswag.Example]:
    """Lengths like the real validation set: contexts of ~25-60 words, endings of ~8-30 words."""
    rng = random.Random(seed)

    def words(lo, hi):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    return [hellaswag.Example(words(25, 60), [words(8, 30) for _ in range(4)], rng.randint(0, 3)) for _ in range(n)]


def build_nanogpt_style(model, examples) -> float:
    """One example (4 rows) per forward pass, logits at every position: build-nanogpt's hellaswag.py. -> acc_norm"""
    correct = 0
    for ex in examples:
        rows = [ex.context + ending for ending in ex.endings]
        width = max(map(len, rows))
        tokens = torch.zeros((4, width), dtype=torch.long)
        mask = torch.zeros((4, width))
        for i, row in enumerate(rows):
            tokens[i, : len(row)] = torch.tensor(row)
            mask[i, len(ex.context) : len(row)] = 1
        with torch.no_grad():
            logits, _ = model(tokens)
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="none").view(4, -1)
        mean_loss = (losses * mask[:, 1:]).sum(dim=1) / mask[:, 1:].sum(dim=1)
        correct += int(mean_loss.argmin()) == ex.label
    return correct / len(examples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="a MODEL for load_model; default: random weights of --shape")
    parser.add_argument("--shape", default="4,4,256", help="n_layer,n_head,n_embd of the random model")
    parser.add_argument("--data", help="a hellaswag_val.jsonl (default: synthetic examples)")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.model:
        model = load_model(args.model)
    else:
        n_layer, n_head, n_embd = map(int, args.shape.split(","))
        torch.manual_seed(0)
        model = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd)).eval()
    examples = hellaswag.load_examples(args.data, args.examples) if args.data else synthetic_examples(args.examples)
    examples = hellaswag.tokenize(examples)  # tokenising is the same work both ways: leave it out
    hellaswag.evaluate(model, examples[:2], batch_size=2)  # warm-up
    print(f"{model.num_parameters():,} parameters, {len(examples)} examples, {args.threads} threads")
    for _ in range(args.rounds):
        for batch_size in (args.batch_size, 1):
            started = time.perf_counter()
            result = hellaswag.evaluate(model, examples, batch_size=batch_size)
            seconds = time.perf_counter() - started
            print(f"evaluate, batch_size {batch_size:3d}:    {len(examples) / seconds:7.2f} examples/s "
                  f"(acc {result.acc:.4f}, acc_norm {result.acc_norm:.4f})", flush=True)
        started = time.perf_counter()
        acc_norm = build_nanogpt_style(model, examples)
        seconds = time.perf_counter() - started
        print(f"build-nanogpt style, 1 per forward: {len(examples) / seconds:7.2f} examples/s "
              f"(acc_norm {acc_norm:.4f})", flush=True)


if __name__ == "__main__":
    main()
