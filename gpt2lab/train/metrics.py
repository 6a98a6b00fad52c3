"""The numbers logged for each training step: its time, throughput and MFU (RUN/metrics.jsonl itself is
`run_directory.MetricsLog`)."""

import time

import torch

from gpt2lab.runtime.perf import sync


class StepTimer:
    def __init__(self, device: torch.device, flops_per_token: float, peak: float | None, world_size: int):
        self.device, self.flops_per_token, self.peak, self.world_size = device, flops_per_token, peak, world_size
        self.rates: list[float] = []

    def start(self) -> None:
        sync(self.device)
        self.t0 = time.perf_counter()

    def stop(self, tokens: int) -> dict:
        sync(self.device)
        dt = time.perf_counter() - self.t0
        rate = tokens / dt
        self.rates.append(rate)
        timing = {"ms_per_step": dt * 1000, "tokens_per_s": rate}
        if self.peak:
            timing["mfu"] = rate * self.flops_per_token / (self.peak * self.world_size)
        return timing

    def steady_tokens_per_s(self) -> float | None:
        """Mean throughput without the first steps (allocator warm-up, torch.compile)."""
        rates = self.rates[min(3, len(self.rates) // 2):]
        return sum(rates) / len(rates) if rates else None
