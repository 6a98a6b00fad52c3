"""Performance arithmetic shared by training metrics, the planner and `gpt2lab bench`: FLOPs per token, GPU specs
and peaks, a measured matmul peak, timing sync.

Model FLOPs utilisation (MFU) = achieved FLOP/s / the hardware's peak, where achieved = tokens/s x FLOPs per token.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import torch

MIB = 2**20


@dataclass(frozen=True)
class GPUSpec:
    name: str
    bf16_flops: float  # published dense bf16 tensor-core peak (no sparsity), FLOP/s
    memory_bytes: int  # as nvidia-smi reports it
    pattern: str  # how torch.cuda.get_device_name names it ("NVIDIA H100 80GB HBM3"); the first match wins


# GPUs people train GPT-2 on, by the short name `gpt2lab train --dry-run --plan-device` takes; a CUDA device not in
# the table reports no MFU. Order matters: the PCIe H100 and the 40 GB A100 before their namesakes.
GPUS = {
    "h100-pcie": GPUSpec("NVIDIA H100 PCIe 80GB", 756e12, 81559 * MIB, r"H100.*PCIe"),
    "h100": GPUSpec("NVIDIA H100 SXM 80GB", 989e12, 81559 * MIB, r"H100"),
    "h200": GPUSpec("NVIDIA H200 141GB", 989e12, 143771 * MIB, r"H200"),
    "a100-40gb": GPUSpec("NVIDIA A100 40GB", 312e12, 40960 * MIB, r"A100.*40GB"),
    "a100": GPUSpec("NVIDIA A100 80GB", 312e12, 81920 * MIB, r"A100"),
    "l40s": GPUSpec("NVIDIA L40S 48GB", 362e12, 46068 * MIB, r"L40S"),
    "a10": GPUSpec("NVIDIA A10 24GB", 125e12, 23028 * MIB, r"\bA10\b"),
    "l4": GPUSpec("NVIDIA L4 24GB", 121e12, 23034 * MIB, r"\bL4\b"),
    "rtx4090": GPUSpec("NVIDIA GeForce RTX 4090 24GB", 165e12, 24564 * MIB, r"RTX 4090"),
    "rtx3090": GPUSpec("NVIDIA GeForce RTX 3090 24GB", 71e12, 24576 * MIB, r"RTX 3090"),
}


def gpu_spec(device_name: str) -> GPUSpec | None:
    """The table's entry for a CUDA device's name, or None."""
    return next((spec for spec in GPUS.values() if re.search(spec.pattern, device_name)), None)


def flops_per_token(n_params: int, n_layer: int, n_embd: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the matmuls (forward 2N, backward 4N) + 6LCT for attention scores."""
    return 6 * n_params + 6 * n_layer * n_embd * seq_len


def peak_flops(device: torch.device) -> float | None:
    """The published bf16 peak of `device` (FLOP/s), or None for a CPU or a GPU not in the table."""
    if device.type != "cuda":
        return None
    spec = gpu_spec(torch.cuda.get_device_name(device))
    return spec.bf16_flops if spec else None


def measure_matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, seconds: float = 1.0) -> float:
    """FLOP/s of a large square matmul: the practical peak the model's matmuls are held against (a CPU has no
    published one that torch reaches: it depends on the cores, the vector units and the threads torch uses).

    The size doubles from 256 up to `n` while one product takes under 50 ms, so a dtype the device only
    emulates (bf16 on a CPU without AVX512-BF16: ~500x slower) is still measured in about `seconds`.
    """
    size = 256
    while True:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        if size >= n or time.perf_counter() - t0 > 0.05:
            break
        size *= 2
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
    sync(device)
    return 2 * size**3 * count / (time.perf_counter() - t0)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work: CUDA runs asynchronously, and a timer must time the work, not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
