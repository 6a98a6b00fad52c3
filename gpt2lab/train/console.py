"""The trainer at the terminal: a line per step (above a progress bar on a terminal), and Ctrl-C / SIGTERM, which
finish the step and save a checkpoint (a second Ctrl-C quits at once)."""

from __future__ import annotations

import contextlib
import signal
import sys

import torch

from gpt2lab.runtime import distributed


class StepPrinter:
    """Rank 0's console: each step's line, printed above a tqdm bar when stderr is a terminal and progress is on."""

    def __init__(self, log, max_steps: int, first_step: int, progress: bool, is_main: bool):
        self.log, self.max_steps = log, max_steps
        self.bar = None
        if progress and is_main and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=max_steps, initial=first_step, unit="step", dynamic_ncols=True, leave=False)

    def step(self, step: int, result, timing: dict) -> None:
        mfu = f" | mfu {timing['mfu'] * 100:.1f}%" if "mfu" in timing else ""
        line = (f"step {step:>6}/{self.max_steps} | loss {result.loss:.4f} | lr {result.lr:.2e} | "
                f"norm {result.grad_norm:.3f} | {timing['ms_per_step']:.0f} ms | {timing['tokens_per_s']:,.0f} tok/s"
                f"{mfu}")
        if self.bar is not None:
            self.bar.write(line)  # printed above the bar, which stays at the bottom
            self.bar.update(1)
        else:
            self.log(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class StopSignals:
    """SIGINT and SIGTERM ask the run to stop after the step in progress (`requested`, agreed by every rank);
    a second one raises KeyboardInterrupt at once. A context manager: the previous handlers come back after."""

    def __init__(self, log, device: torch.device, ctx: distributed.DistContext, current_step):
        self.log, self.device, self.ctx, self.current_step = log, device, ctx, current_step
        self.name: str | None = None
        self.previous = {}

    def __enter__(self) -> StopSignals:
        def handler(signum, frame):
            if self.name is not None:  # a second Ctrl-C: stop now (a half checkpoint is discarded)
                raise KeyboardInterrupt
            self.name = signal.Signals(signum).name
            self.log(f"{self.name} received: finishing step {self.current_step() + 1}, then saving a checkpoint "
                     f"(press Ctrl-C again to quit without saving)")

        with contextlib.suppress(ValueError):  # not the main thread: no handlers
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def requested(self) -> bool:
        """Whether any rank got a signal: every rank must stop at the same step (the checkpoint is collective)."""
        flag = torch.tensor(1.0 if self.name else 0.0)
        if self.ctx.enabled:
            if self.device.type == "cuda":
                flag = flag.to(self.device)
            distributed.all_reduce_sum(flag)
        if flag.item() > 0 and self.name is None:
            self.name = "a signal on another rank"
        return flag.item() > 0
