"""What a run records about itself: RUN/metrics.jsonl and the dashboards that show it (`MetricsLog`), and the
numbers of each step's time (`StepTimer`: ms per step, tokens/s, MFU)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from gpt2lab.runtime.perf import Stopwatch
from gpt2lab.storage.atomic import reporting_refusals


class MetricsLog:
    """metrics.jsonl, the record of a run, and the dashboards that show it (`sinks`: TensorBoard, W&B; see
    trackers.py): every record is written to the file first, then handed to each sink."""

    def __init__(self, path, enabled: bool = True, sinks=()):
        self.path, self.enabled, self.sinks = Path(path), enabled, list(sinks)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in record.items()}
        # One short append per line: a crash loses at most that line.
        with reporting_refusals(self.path), open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")
        values = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        for sink in self.sinks:
            sink.scalars(record["step"], values)

    def write_text(self, step: int, name: str, text: str) -> None:
        """Text for the dashboards (samples); the run directory keeps its own copy (samples.txt)."""
        for sink in self.sinks if self.enabled else ():
            sink.text(step, name, text)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []


class StepTimer:
    def __init__(self, device: torch.device, flops_per_token: float, peak: float | None, world_size: int):
        self.watch, self.flops_per_token, self.peak, self.world_size = Stopwatch(device), flops_per_token, peak, world_size
        self.rates: list[float] = []

    def start(self) -> None:
        self.watch.start()

    def stop(self, tokens: int) -> dict:
        dt = self.watch.stop()
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
