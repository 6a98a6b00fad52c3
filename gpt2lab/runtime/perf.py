"""Performance arithmetic and timing shared by training metrics, the planner and `gpt2lab bench`: FLOPs per token,
the one way to time device work (`Stopwatch`, `time_calls`, `calls_per_second`), and measured peaks.

Model FLOPs utilisation (MFU) = achieved FLOP/s / the hardware's peak, where achieved = tokens/s x FLOPs per token.
"""

from __future__ import annotations

import time

import torch


def flops_per_token(n_params: int, n_layer: int, n_embd: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the matmuls (forward 2N, backward 4N) + 6LCT for attention scores."""
    return 6 * n_params + 6 * n_layer * n_embd * seq_len


def sync(device: torch.device) -> None:
    """Wait for the device's queued work: CUDA runs asynchronously, and a timer must time the work, not its launch."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Seconds of device work: waits for the device at start and stop."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.t0 = None

    def start(self) -> None:
        sync(self.device)
        self.t0 = time.perf_counter()

    def stop(self) -> float:
        sync(self.device)
        return time.perf_counter() - self.t0


def time_calls(fn, device, calls: int) -> list[float]:
    """Seconds each of `calls` calls of fn() takes, timed one by one."""
    watch, times = Stopwatch(device), []
    for _ in range(calls):
        watch.start()
        fn()
        times.append(watch.stop())
    return times


def calls_per_second(fn, device, seconds: float) -> float:
    """How many calls of fn() the device completes per second, repeating it for about `seconds`."""
    watch, count = Stopwatch(device), 0
    watch.start()
    while time.perf_counter() - watch.t0 < seconds:
        fn()
        count += 1
    return count / watch.stop()


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
        (took,) = time_calls(lambda: a @ b, device, 1)
        if size >= n or took > 0.05:
            break
        size *= 2
    return 2 * size**3 * calls_per_second(lambda: a @ b, device, seconds)


def measure_read_bandwidth(device: torch.device, mb: int = 1024, seconds: float = 1.0) -> float:
    """Bytes/s for streaming through a buffer larger than the caches: what batch-1 decoding is bound by."""
    x = torch.ones(mb * 2**20 // 4, device=device)
    x.sum()
    return x.numel() * 4 * calls_per_second(x.sum, device, seconds)
