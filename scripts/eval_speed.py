"""HellaSwag examples/s, batched vs one example per forward pass (build-nanogpt's way), side by side; or (--task
loss) the held-out loss's tokens/s against the training tokens/s of the same model, alternating in one process.

    python scripts/eval_speed.py [--model gpt2 | --shape 4,4,256] [--examples 64] [--batch-size 8] [--rounds 2]
    python scripts/eval_speed.py --task loss [--shape 6,4,128] [--tokens 16384] [--no-keep-freed] [--dtype float32]

--task loss times `gpt2lab eval --task loss`'s evaluate_loss (batch 8 x 128 windows by default, the demo's shape)
and a training step of the demo's optimizer (Muon + AdamW, 8 x 128 tokens) on random weights and random tokens.
--no-keep-freed leaves glibc's default allocator behaviour (what `gpt2lab eval` had before it kept freed memory;
the trainer always keeps it), so run it once with and once without, as two processes.

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


def loss_speed(args) -> None:
    import numpy as np

    from gpt2lab.eval.loss import evaluate_loss
    from gpt2lab.runtime.device import autocast_dtype, keep_freed_memory
    from gpt2lab.train.config import OptimSection
    from gpt2lab.train.optim import make_optimizer
    from gpt2lab.train.parallel import ParallelModel
    from gpt2lab.train.step import TrainStep, repeat

    if not args.no_keep_freed:
        keep_freed_memory()
    cpu = torch.device("cpu")
    dtype = autocast_dtype(args.dtype, cpu)
    n_layer, n_head, n_embd = map(int, args.shape.split(","))
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=args.seq_len))
    tokens = np.random.default_rng(0).integers(0, 50257, args.tokens + 1).astype(np.uint16)
    x = torch.from_numpy(tokens[: args.batch_size * (args.seq_len + 1)].astype(np.int64)).view(args.batch_size, -1)
    step = TrainStep(ParallelModel(model), make_optimizer(model, OptimSection(name="muon"), cpu), device=cpu,
                     amp_dtype=dtype)
    batch = repeat((x[:, :-1], x[:, 1:]))
    step(0, batch)  # warm-up, both sides
    evaluate_loss(model, tokens[:2049], batch_size=args.batch_size, autocast_dtype=dtype)
    print(f"{model.num_parameters():,} parameters, {args.threads} threads, {dtype or torch.float32}, "
          f"keep freed memory: {not args.no_keep_freed}")
    for _ in range(args.rounds):
        started, steps = time.perf_counter(), 4
        for i in range(steps):
            step(i + 1, batch)
        train = steps * args.batch_size * args.seq_len / (time.perf_counter() - started)
        result = evaluate_loss(model, tokens, batch_size=args.batch_size, autocast_dtype=dtype)
        print(f"eval loss {result.tokens_per_s:7.0f} tokens/s   train {train:7.0f} tokens/s   "
              f"ratio {result.tokens_per_s / train:.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", choices=("hellaswag", "loss"), default="hellaswag")
    parser.add_argument("--tokens", type=int, default=16384, help="loss: targets per evaluation")
    parser.add_argument("--seq-len", type=int, default=128, help="loss: window and training sequence length")
    parser.add_argument("--dtype", default="float32", help="loss: float32, bfloat16 or auto")
    parser.add_argument("--no-keep-freed", action="store_true", help="loss: glibc's default allocator behaviour")
    parser.add_argument("--model", help="a MODEL for load_model; default: random weights of --shape")
    parser.add_argument("--shape", default="4,4,256", help="n_layer,n_head,n_embd of the random model")
    parser.add_argument("--data", help="a hellaswag_val.jsonl (default: synthetic examples)")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.task == "loss":
        return loss_speed(args)
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
