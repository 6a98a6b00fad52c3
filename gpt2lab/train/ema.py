"""An exponential moving average of the weights (`optim.ema`), for evaluation and, when asked, the exported model.

After every optimizer step each float32 average moves towards the weights: average += (1 - d) * (weights - average),
with d = min(optim.ema, (1 + n) / (10 + n)) after n updates, the warm-up of TensorFlow's ExponentialMovingAverage:
early on the average follows the weights closely instead of staying near the random initialisation for ~1 / (1 - d)
steps. The average never feeds back into training, so the run's losses are the same with it or without it; it is
saved in training_state.pt (under "ema") so that `--resume` continues it bit for bit, and `gpt2lab export --ema`
writes it as a plain GPT-2 model.
"""

from __future__ import annotations

import contextlib

import torch

from gpt2lab.errors import GPT2LabError


def decay_at(decay: float, updates: int) -> float:
    """The averaging factor of update number `updates` (1, 2, ...): `decay`, warmed up."""
    return min(decay, (1 + updates) / (10 + updates))


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
        weight = 1 - decay_at(self.decay, self.updates)
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
        return {"decay": self.decay, "updates": self.updates,
                "average": dict(zip(self.names, self.average))}

    def load_state_dict(self, state: dict) -> None:
        saved = state["average"]
        if sorted(saved) != sorted(self.names):
            raise ValueError("the saved weight average holds other parameters than this model")
        self.updates = int(state["updates"])
        with torch.no_grad():
            for name, tensor in zip(self.names, self.average):
                tensor.copy_(saved[name])
