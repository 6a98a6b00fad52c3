"""Muon's time per step against AdamW's on the shakespeare-cpu model (6 layers x 128, B=8, T=128), fp32 and bf16
autocast: the bare training step (forward, backward, clipping, optimizer step), the two optimizers alternating in
one process (10 steps each, six times) on the same random batch, after 3 warm-up steps. Prints medians as JSON.

    .venv/bin/python scripts/optimizer_step_time.py
"""

import json
import statistics

import torch

from gpt2lab.model.gpt import GPT
from gpt2lab.runtime.device import autocast_dtype, keep_freed_memory
from gpt2lab.runtime.perf import time_calls
from gpt2lab.train.config_files import resolve_config
from gpt2lab.train.optim import make_optimizer
from gpt2lab.train.parallel import ParallelModel
from gpt2lab.train.step import TrainStep, repeat

ROUNDS, STEPS, WARMUP = 6, 10, 3


def main() -> None:
    keep_freed_memory()  # as `gpt2lab train` does on a CPU
    results = {}
    for precision in ("fp32", "bf16"):
        steps = {name: training_step(name, precision) for name in ("adamw", "muon")}
        times = {name: [] for name in steps}
        for name, step in steps.items():
            for _ in range(WARMUP):
                step()
        for _ in range(ROUNDS):
            for name, step in steps.items():
                times[name].append(statistics.mean(time_calls(step, "cpu", STEPS)) * 1e3)
        median = {name: statistics.median(t) for name, t in times.items()}
        results[precision] = {"ms_per_step": median, "muon_over_adamw": median["muon"] / median["adamw"]}
    print(json.dumps(results, indent=1))


def training_step(optimizer_name: str, precision: str):
    """One step of the demo preset's model with this optimizer (the preset's settings for it): the trainer's own
    step (train/step.py), on one random batch."""
    overrides = [("optim.name", optimizer_name), ("runtime.precision", precision)]
    if optimizer_name == "adamw":
        overrides += [("optim.lr", "1e-3"), ("optim.min_lr", "1e-4")]  # the sweep's best AdamW
    config = resolve_config("shakespeare-cpu", overrides=overrides)
    torch.manual_seed(0)
    model = GPT(config.model.gpt_config()).train()
    cpu = torch.device("cpu")
    step = TrainStep(ParallelModel(model), make_optimizer(model, config.optim, cpu), device=cpu,
                     amp_dtype=autocast_dtype(precision, cpu), grad_clip=config.optim.grad_clip)
    tokens = torch.randint(0, 50257, (config.data.batch_size, config.data.seq_len + 1))
    batch = (tokens[:, :-1], tokens[:, 1:])
    return lambda: step(0, repeat(batch))


if __name__ == "__main__":
    main()
