"""RUN/metrics.jsonl (one JSON object per line, always with "step"), step timing, throughput and MFU."""

import json
import math
import time
from pathlib import Path

import torch

from gpt2lab.atomic import atomic_write_text, reporting_refusals
from gpt2lab.perf import sync


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


class MetricsLog:
    def __init__(self, path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in record.items()}
        # One short append per line: a crash loses at most that line.
        with reporting_refusals(self.path), open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")

    @staticmethod
    def truncate(path, after_step: int) -> None:
        """Drop records after `after_step` (logged by a killed run past its last checkpoint), atomically."""
        path = Path(path)
        if not path.exists():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line)["step"] <= after_step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by the kill
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def read_metrics(path) -> list[dict]:
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records
