"""How the processes of a run share the model: alone, or data-parallel with PyTorch's DDP (torchrun).

`ParallelModel` is the model as the training step sees it: `module` to call (compiled and/or DDP-wrapped),
`raw` for everything else (evaluation, sampling, checkpoints: never the wrappers), and the two things that differ
between strategies: whether this micro-step's backward synchronises gradients, and the global gradient norm.
"""

from __future__ import annotations

import contextlib

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from gpt2lab.runtime.distributed import DistContext


class ParallelModel:
    def __init__(self, model: torch.nn.Module, ctx: DistContext = DistContext(), device=None, compile: bool = False):
        self.raw, self.ctx = model, ctx
        module = torch.compile(model) if compile else model
        if ctx.enabled:
            cuda = device is not None and torch.device(device).type == "cuda"
            module = DDP(module, device_ids=[ctx.local_rank] if cuda else None)
        self.module = module

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def sync_gradients(self, last_micro_step: bool):
        """The context of one micro-step's forward and backward: DDP all-reduces gradients on the last micro-step
        only. It is entered before the forward pass, which is where DDP decides whether its hooks will sync."""
        if last_micro_step or not isinstance(self.module, DDP):
            return contextlib.nullcontext()
        return self.module.no_sync()

    def parameters(self):
        return self.raw.parameters()

    def clip_grad_norm(self, max_norm: float) -> float:
        """Scale all gradients so their global norm is at most max_norm (inf: only measure it); the norm before."""
        return float(torch.nn.utils.clip_grad_norm_(self.raw.parameters(), max_norm))
