"""Performance arithmetic shared by training metrics and `gpt2lab bench`: FLOPs per token, GPU peaks, timing sync.

Model FLOPs utilisation (MFU) = achieved FLOP/s / the hardware's peak, where achieved = tokens/s x FLOPs per token.
"""

from __future__ import annotations

import torch

# Published dense bf16 peaks (no sparsity) of GPUs people train GPT-2 on; other devices report no MFU.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def flops_per_token(n_params: int, n_layer: int, n_embd: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the matmuls (forward 2N, backward 4N) + 6LCT for attention scores."""
    return 6 * n_params + 6 * n_layer * n_embd * seq_len


def peak_flops(device: torch.device) -> float | None:
    """The published bf16 peak of `device` (FLOP/s), or None for a CPU or a GPU not in the table."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work: CUDA runs asynchronously, and a timer must time the work, not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
