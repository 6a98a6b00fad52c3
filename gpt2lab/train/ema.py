"""An exponential moving average of the weights (`optim.ema`), for evaluation and, when asked, the exported model.

After every optimizer step each float32 average moves towards the weights: average += w_n * (weights - average),
with w_n = (1 - d) / (1 - d**n) at update n and d = optim.ema: the bias-corrected exponential average (Adam corrects
its moments the same way), so update k weighs (1 - d) d**(n - k), normalised, and nothing of the random
initialisation is left in it. Its horizon is ~1 / (1 - d) steps from the first update on: 0.99 averages about the
last 100 steps. (TensorFlow's warm-up, min(d, (1 + n) / (10 + n)), caps d until step ~9 / (1 - d), so for runs
shorter than that every factor gives the same average of the last ~10 % of the steps.) The average never feeds
back into training, so the run's losses are the same with it or without it; it is
saved in training_state.pt (under "ema") so that `--resume` continues it bit for bit, and `gpt2lab export --ema`
writes it as a plain GPT-2 model.
"""

from __future__ import annotations

import contextlib

import torch

from gpt2lab.errors import GPT2LabError


def step_weight(decay: float, updates: int) -> float:
    """How far update number `updates` (1, 2, ...) moves the average towards the weights: 1 at the first."""
    return (1 - decay) / (1 - decay**updates)


class WeightAverage:
    """The moving average of `model`'s parameters (as named by named_parameters: the tied embedding once)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        named = list(model.named_parameters())
        if any(hasattr(p, "to_local") for _, p in named):  # config_checks refuses fsdp; this catches "auto"'s choice
            raise GPT2LabError("optim.ema is not supported with FSDP yet (the average would be sharded): set "
                               "parallel.strategy = \"ddp\", or drop optim.ema")
        self.names = [name for name, _ in named]
        self.params = [p for _, p in named]
        self.average = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        weight = step_weight(self.decay, self.updates)
        torch._foreach_lerp_(self.average, [p.detach().float() for p in self.params], weight)

    @contextlib.contextmanager
    def swapped_in(self):
        """The model holds the averaged weights inside the block, its own weights again after it, bit for bit."""
        with torch.no_grad():
            own = [p.detach().clone() for p in self.params]
            torch._foreach_copy_(self.params, self.average)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, own)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "average": dict(zip(self.names, self.average))}

    def load_state_dict(self, state: dict) -> None:
        saved = state["average"]
        if sorted(saved) != sorted(self.names):
            raise ValueError("the saved weight average holds other parameters than this model")
        self.updates = int(state["updates"])
        with torch.no_grad():
            for name, tensor in zip(self.names, self.average):
                tensor.copy_(saved[name])
