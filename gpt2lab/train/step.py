"""The training step, written once: the trainer, `gpt2lab bench`, the planner's trial and the scripts all run it.

    step(i, batches):  every group's LR for step i  ->  zero the gradients  ->  grad_accum micro-steps (fewer
                       early in a batch-size warm-up: forward in the autocast precision, loss / micro-steps,
                       backward; gradients sync on the last only)
                       ->  the mean loss over processes  ->  unscale (fp16)  ->  clip the global norm  ->  refuse a
                       non-finite loss or norm  ->  optimizer step (through the GradScaler under fp16)  ->
                       the weights' moving average, if any (ema.py)

Each micro-loss is divided by the step's micro-steps, so the summed gradient is the gradient of the mean loss over the whole
step's tokens, exactly as one big batch would give.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from gpt2lab.runtime import distributed
from gpt2lab.runtime.device import autocast
from gpt2lab.train.parallel import ParallelModel


class NonFiniteStep(FloatingPointError):
    """The loss or the gradient norm of a step was NaN or infinite; the optimizer did not step."""

    def __init__(self, loss: float, grad_norm: float):
        super().__init__(f"loss {loss}, grad norm {grad_norm}")
        self.loss, self.grad_norm = loss, grad_norm


@dataclass
class StepResult:
    loss: float  # the mean over the step's tokens, all processes
    grad_norm: float  # before clipping
    lr: float | None  # AdamW's LR of the step, as the schedule set it (None: no schedule)


def gpt_loss(model, x, y):
    """Our GPT's mean cross-entropy; not the logits, which nothing needs and which are the size of the vocabulary."""
    return model(x, y)[1]


class TrainStep:
    """One optimizer step of `model` over `grad_accum` micro-batches.

    grad_clip: the global norm to clip to (0: none; the norm is still measured); schedule: step index -> LR, setting
    every param group's (None: the optimizer's LRs as they are); loss_fn(model, x, y): the scalar loss (another
    implementation's, for `gpt2lab bench`); average: a WeightAverage to update after each optimizer step. Under
    fp16 the step owns the GradScaler, a piece of the run's state.
    """

    def __init__(self, model: ParallelModel, optimizer, *, device, amp_dtype=None, grad_accum: int = 1,
                 grad_clip: float = 0.0, schedule: Callable[[int], float] | None = None,
                 loss_fn: Callable = gpt_loss, average=None):
        self.model, self.optimizer = model, optimizer
        self.device, self.amp_dtype, self.grad_accum = torch.device(device), amp_dtype, grad_accum
        self.max_norm = grad_clip if grad_clip > 0 else math.inf
        self.schedule, self.loss_fn, self.average = schedule, loss_fn, average
        self.scaler = torch.amp.GradScaler(self.device.type) if amp_dtype == torch.float16 else None

    def __call__(self, step: int, batches: Iterator, micro_steps: int | None = None) -> StepResult:
        """micro_steps: this step's, if not grad_accum (a batch-size warm-up's smaller steps)."""
        lr = self.schedule(step) if self.schedule is not None else None
        self.optimizer.zero_grad(set_to_none=True)
        loss_t = self.forward_backward(batches, micro_steps)
        distributed.all_reduce_mean(loss_t)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        # Clipping scales all gradients (Muon's and AdamW's) by one factor, before either optimizer. Muon's
        # orthogonalised update is scale-free, so for its matrices clipping only changes how much this step's
        # gradient weighs in the momentum buffer, not the size of the step.
        norm = self.model.clip_grad_norm(self.max_norm)
        loss = float(loss_t)
        # Under fp16 an infinite norm is the scaler's business: it skips that step and lowers the scale.
        if not math.isfinite(loss) or (self.scaler is None and not math.isfinite(norm)):
            raise NonFiniteStep(loss, norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.average is not None:
            self.average.update()
        return StepResult(loss, norm, lr)

    def forward_backward(self, batches: Iterator, micro_steps: int | None = None) -> torch.Tensor:
        """The micro-steps: forward and backward over `micro_steps` (default grad_accum) batches from `batches`;
        gradients accumulate. Returns the mean loss (detached) over them, on this process."""
        micro_steps = micro_steps or self.grad_accum
        loss_sum = torch.zeros((), device=self.device)
        for micro_step in range(micro_steps):
            x, y = next(batches)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self.model.sync_gradients(micro_step == micro_steps - 1):
                with autocast(self.device, self.amp_dtype):
                    loss = self.loss_fn(self.model, x, y)
                loss = loss / micro_steps
                loss_sum += loss.detach()
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        return loss_sum


def repeat(batch) -> Iterator:
    """The same (x, y) batch again and again: what a benchmark or a trial step trains on."""
    while True:
        yield batch


def in_rows_of(batches: Iterator, length: int) -> Iterator:
    """The (x, y) batches cut into rows of `length` tokens: the same tokens and targets, shorter contexts (the
    sequence-length warm-up, schedule.seq_len_at). `length` must divide the batches' sequence length."""
    for x, y in batches:
        yield x.reshape(-1, length), y.reshape(-1, length)
