"""Muon's time per step against AdamW's on the shakespeare-cpu model (6 layers x 128, B=8, T=128), fp32 and bf16
autocast: the bare training step (forward, backward, clipping, optimizer step), the two optimizers alternating in
one process (10 steps each, six times) on the same random batch, after 3 warm-up steps. Prints medians as JSON.
With --techniques: the preset's Muon step before issue 25's ablation against the same step with each of its options
(docs/muon.md).

    .venv/bin/python scripts/optimizer_step_time.py [--techniques]
"""

import json
import statistics
import sys

import torch

from gpt2lab.model.gpt import GPT
from gpt2lab.runtime.device import autocast_dtype, keep_freed_memory
from gpt2lab.runtime.perf import time_calls
from gpt2lab.train.config_files import resolve_config
from gpt2lab.train.optim import make_optimizer
from gpt2lab.train.parallel import ParallelModel
from gpt2lab.train.step import TrainStep, repeat

ROUNDS, STEPS, WARMUP = 6, 10, 3
OPTIMIZERS = {"adamw": [("optim.name", "adamw"), ("optim.lr", "1e-3"), ("optim.min_lr", "1e-4")],  # best AdamW
              "muon": []}  # the preset's
# --techniques: the preset as it was before issue 25's ablation (its options off), then each option added to it
BEFORE = [("optim.muon_ns_coefficients", "quintic"), ("optim.muon_normuon", "false"), ("optim.ema", "0")]
WINNERS = [("optim.muon_ns_coefficients", "polar_express"), ("optim.muon_normuon", "true"),
           ("optim.muon_momentum_warmup_steps", "300")]
TECHNIQUES = {name: BEFORE + added for name, added in {
    "muon": [], "polar_express": WINNERS[:1], "normuon": WINNERS[1:2],
    "cautious_wd": [("optim.muon_weight_decay", "0.1"), ("optim.cautious_wd", "true")],
    "ema": [("optim.ema", "0.99")], "winners": WINNERS,
    "adamw_cautious_wd": [("optim.adamw_cautious_wd", "true")]}.items()}


def main() -> None:
    keep_freed_memory()  # as `gpt2lab train` does on a CPU
    arms = TECHNIQUES if "--techniques" in sys.argv else OPTIMIZERS
    results = {}
    for precision in ("fp32", "bf16"):
        steps = {name: training_step(overrides, precision) for name, overrides in arms.items()}
        times = {name: [] for name in steps}
        for name, step in steps.items():
            for _ in range(WARMUP):
                step()
        for _ in range(ROUNDS):
            for name, step in steps.items():
                times[name].append(statistics.mean(time_calls(step, "cpu", STEPS)) * 1e3)
        median = {name: statistics.median(t) for name, t in times.items()}
        first = next(iter(median))
        results[precision] = {"ms_per_step": median,
                              f"over_{first}": {name: ms / median[first] for name, ms in median.items()}}
    print(json.dumps(results, indent=1))


def training_step(overrides: list, precision: str):
    """One step of the demo preset's model with the preset's settings changed by `overrides`: the trainer's own
    step (train/step.py, with the weights' average when optim.ema is set), on one random batch."""
    from gpt2lab.train.ema import WeightAverage

    config = resolve_config("shakespeare-cpu", overrides=[*overrides, ("runtime.precision", precision)])
    torch.manual_seed(0)
    model = GPT(config.model.gpt_config()).train()
    cpu = torch.device("cpu")
    average = WeightAverage(model, config.optim.ema) if config.optim.ema else None
    step = TrainStep(ParallelModel(model), make_optimizer(model, config.optim, cpu), device=cpu,
                     amp_dtype=autocast_dtype(precision, cpu), grad_clip=config.optim.grad_clip, average=average)
    tokens = torch.randint(0, 50257, (config.data.batch_size, config.data.seq_len + 1))
    batch = (tokens[:, :-1], tokens[:, 1:])
    return lambda: step(0, repeat(batch))


if __name__ == "__main__":
    main()
