"""How the processes of a run share the model: alone, data-parallel with DDP, or sharded with FSDP2.

    ddp   every process holds the whole model, its gradients and optimizer state; gradients are all-reduced
          (PyTorch's DistributedDataParallel). Fastest while everything fits one device.
    fsdp  each of W processes holds 1/W of every parameter, gradient and optimizer state
          (`torch.distributed.fsdp.fully_shard`, per transformer block, then the root: embeddings, final norm and the
          tied head); a block's whole weights exist only while it computes. For models whose states do not fit.

`ParallelModel` is the model as the training step sees it: `module` to call (sharded, compiled and/or DDP-wrapped),
`raw` for everything else (evaluation, sampling, checkpoints: never the DDP or compile wrappers; under FSDP `raw`
is the sharded model itself), and the things that differ between strategies: whether this micro-step's backward
synchronises gradients, and the global gradient norm.
"""

from __future__ import annotations

import contextlib

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from gpt2lab.errors import BadValue
from gpt2lab.runtime.distributed import DistContext

STRATEGIES = ("ddp", "fsdp", "auto")


def check_strategy(strategy: str, device: torch.device, amp_dtype) -> None:
    """Refuse, before any work, a strategy this device and precision cannot run."""
    if strategy not in STRATEGIES:
        raise BadValue("parallel.strategy", f"must be ddp, fsdp or auto, got {strategy!r}")
    if strategy != "fsdp":
        return
    if device.type not in ("cpu", "cuda"):
        raise BadValue("parallel.strategy", f"fsdp runs on CUDA GPUs and CPUs, not {device.type}; use ddp")
    if amp_dtype == torch.float16:
        raise BadValue("parallel.strategy", "fsdp does not take fp16 (its loss scaling is not sharded here); set "
                                            "runtime.precision to bf16 or fp32, or use ddp")


class ParallelModel:
    def __init__(self, model: torch.nn.Module, ctx: DistContext = DistContext(), device=None, compile: bool = False,
                 strategy: str = "ddp", amp_dtype=None, activation_checkpointing: bool = False):
        self.raw, self.ctx, self.strategy = model, ctx, strategy
        if activation_checkpointing:
            checkpoint_blocks(model)
        if strategy == "fsdp":
            shard(model, ctx, torch.device(device or "cpu"), amp_dtype)
        module = torch.compile(model) if compile else model
        if strategy == "ddp" and ctx.enabled:
            cuda = device is not None and torch.device(device).type == "cuda"
            module = DDP(module, device_ids=[ctx.local_rank] if cuda else None)
        self.module = module

    @property
    def sharded(self) -> bool:
        return self.strategy == "fsdp"

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def sync_gradients(self, last_micro_step: bool):
        """The context of one micro-step's forward and backward: gradients are reduced across processes on the last
        micro-step only. Set before the forward pass, which is where DDP decides whether its hooks will sync."""
        if self.sharded:
            self.raw.set_requires_gradient_sync(last_micro_step)
            return contextlib.nullcontext()
        if last_micro_step or not isinstance(self.module, DDP):
            return contextlib.nullcontext()
        return self.module.no_sync()

    def parameters(self):
        return self.raw.parameters()

    def clip_grad_norm(self, max_norm: float) -> float:
        """Scale all gradients so their global norm is at most max_norm (inf: only measure it); the norm before.
        Under FSDP the norm is over every shard of every process (a DTensor: its whole value is taken)."""
        norm = torch.nn.utils.clip_grad_norm_(self.raw.parameters(), max_norm)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def checkpoint_blocks(model: torch.nn.Module) -> None:
    """Activation checkpointing per transformer block: a block keeps only its input for the backward pass and
    computes the rest again there (a forward pass more, far less memory). Applied in place, names unchanged."""
    from torch.distributed._composable import checkpoint

    for block in model.transformer.h:
        checkpoint(block)


def shard(model: torch.nn.Module, ctx: DistContext, device: torch.device, amp_dtype) -> None:
    """FSDP2 in place: each block its own unit (its weights gathered just before it computes, freed after), then
    the root for the embeddings, final LayerNorm and the tied head. On GPUs the blocks compute in the autocast dtype
    from float32 master weights, and gradients are reduced in float32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (ctx.world_size,))
    policy = MixedPrecisionPolicy()
    if device.type == "cuda" and amp_dtype is not None:
        policy = MixedPrecisionPolicy(param_dtype=amp_dtype, reduce_dtype=torch.float32)
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    # The root's weights (the tied embedding/head) are needed again as soon as the backward pass starts: keep them.
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
