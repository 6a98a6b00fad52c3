"""torchrun + torch.distributed set-up and tear-down, shared by training and evaluation.

Nothing here replaces PyTorch's own machinery: `torchrun` starts the processes and sets RANK / LOCAL_RANK /
WORLD_SIZE / LOCAL_WORLD_SIZE / MASTER_ADDR / MASTER_PORT; we only pick the backend (NCCL on GPUs, gloo on CPUs),
pin each process to its GPU, and offer the few collectives the rest of the code needs. This is the one module that
reads those variables: everything else asks `launch()` (before joining) or the `DistContext` of `setup`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from gpt2lab.errors import GPT2LabError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1  # the processes on this machine, which share its CPU memory

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, writes checkpoints and prints results."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch() -> DistContext:
    """What torchrun says about this process (rank 0 of 1 without torchrun), before joining any process group."""
    if not launched_by_torchrun():
        return DistContext()
    world_size = int(os.environ["WORLD_SIZE"])
    return DistContext(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), world_size,
                       int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process in the initialised process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def setup(device: torch.device, join_alone: bool = False) -> DistContext:
    """Join the process group if started by torchrun; a no-op context otherwise. `join_alone`: a single process
    (torchrun's world of 1, or no torchrun at all) makes a process group of its own too, for code that needs one
    (FSDP's device mesh)."""
    ctx = launch()
    if ctx.world_size == 1:
        if join_alone and not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(ctx.local_rank)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0,
                                    world_size=1)
        return ctx
    local_rank = ctx.local_rank
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise GPT2LabError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) visible: "
                f"set torchrun --nproc_per_node to at most the number of GPUs per node"
            )
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return ctx


def process_device(device: torch.device, ctx: DistContext) -> torch.device:
    """This process's device: under torchrun on GPUs, the GPU numbered LOCAL_RANK."""
    if device.type == "cuda" and ctx.enabled:
        return torch.device("cuda", ctx.local_rank)
    return device


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks in place (identity on one process); returns it for chaining."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def broadcast_from_main(obj):
    """Rank 0's `obj` (any picklable value) on every rank; `obj` itself on one process."""
    if dist.is_available() and dist.is_initialized():
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def all_gather_object(obj) -> list:
    """Every rank's `obj` (any picklable value), in rank order; [obj] on one process."""
    if dist.is_available() and dist.is_initialized():
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, obj)
        return gathered
    return [obj]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_process(code: int) -> None:
    """Leave a torchrun worker with a reliable exit code.

    With gloo on CPU, about a third of worker processes abort in interpreter shutdown ("terminate called
    without an active exception") *after* all work is done, turning a success into exit code 1. Flushing,
    destroying the process group and leaving with os._exit skips the faulty destructors; single-process runs
    exit normally.
    """
    if not launched_by_torchrun():
        raise SystemExit(code)
    teardown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
