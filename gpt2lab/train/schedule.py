"""Schedules, each a function of the step alone (so a resumed run follows them exactly): learning rates (linear
warmup, then cosine decay or warmup-stable-decay, to a floor; every param group follows the same multiplier curve
scaled to its own peak), Muon's momentum warmup, and the sequence-length and batch-size warm-ups."""

import math

from gpt2lab.train.config import DataSection, OptimSection, ScheduleSection
from gpt2lab.train.muon import Muon


def lr_at(step: int, optim: OptimSection, schedule: ScheduleSection, peak: float | None = None) -> float:
    """Learning rate for optimizer step `step` (0-based) of a group whose peak LR is `peak` (default optim.lr,
    AdamW's): linear warmup, then cosine decay or (wsd) constant and a final linear cool-down, then the floor.

    The floor is optim.min_lr scaled with the peak (Muon's floor is muon_lr * min_lr / lr), so every group follows
    the same multiplier curve; for AdamW's groups peak / optim.lr is exactly 1 and the values are unchanged.
    Warmup uses (step + 1) / warmup so the very first step already learns (nanoGPT's step-0 LR of 0 wastes it).
    """
    peak = optim.lr if peak is None else peak
    floor = optim.min_lr * (peak / optim.lr)
    warmup, max_steps = schedule.warmup_steps, schedule.max_steps
    if step < warmup:
        return peak * (step + 1) / warmup
    if step >= max_steps:
        return floor
    if schedule.name == "wsd":  # warmup-stable-decay: the last decay_fraction of all steps cools down linearly
        decay_start = max(warmup, max_steps - round(schedule.decay_fraction * max_steps))
        if step < decay_start:
            return peak
        progress = (step - decay_start) / max(1, max_steps - decay_start)  # 0 -> 1 over the cool-down
        return floor + (1.0 - progress) * (peak - floor)
    progress = (step - warmup) / max(1, max_steps - warmup)  # 0 -> 1 over the decay
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - floor)


def group_peak_lr(group: dict, optim: OptimSection) -> float:
    """A param group's peak LR, from the config (which a resume cannot change), not from the group itself."""
    return optim.muon_lr if Muon.owns(group) else optim.lr


def muon_momentum_at(step: int, optim: OptimSection) -> float:
    """Muon's momentum for step `step`: a linear ramp from muon_momentum_start over the first
    muon_momentum_warmup_steps (as modded-nanogpt's 0.85 -> 0.95), since early gradients change fast and a long
    memory of them only slows the first steps; then muon_momentum. A function of the step alone, so resume is exact."""
    warmup = optim.muon_momentum_warmup_steps
    if step >= warmup:
        return optim.muon_momentum
    start = optim.muon_momentum_start
    return start + (optim.muon_momentum - start) * step / warmup


def set_lr(optimizer, step: int, optim: OptimSection, schedule: ScheduleSection) -> float:
    """Set every param group's LR (and Muon's momentum) for step `step`; returns AdamW's (the one logged as `lr`)."""
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, optim, schedule, peak=group_peak_lr(group, optim))
        if Muon.owns(group):
            group["momentum"] = muon_momentum_at(step, optim)
    return lr_at(step, optim, schedule)


def seq_len_at(step: int, data: DataSection) -> int:
    """The context length step `step` trains on. With a warm-up, data.seq_len_start doubling in equal stages until
    data.seq_len at data.seq_len_warmup_steps (32 -> 128 over 300 steps: 32 for steps 0-149, 64 for 150-299).
    A step's tokens stay the same: its (B, T) micro-batches are cut into (B x T / t, t) rows (`in_rows_of`), so
    the data order, the loader's position and the step's memory bound (at data.seq_len) are unchanged."""
    return _doubling(step, data.seq_len_start, data.seq_len, data.seq_len_warmup_steps)


def batch_tokens_at(step: int, data: DataSection) -> int:
    """The tokens step `step` trains on. With a batch-size warm-up, data.batch_start_tokens doubling in equal
    stages until data.total_batch_tokens at data.batch_warmup_steps: early steps take fewer micro-steps of the
    same micro-batch, so the loader reads the same chunk sequence (a step takes the next ones) and the memory of a
    micro-step is the same. Every stage is a multiple of the first, so any processes x accumulation that divides
    the first step divides them all."""
    return _doubling(step, data.batch_start_tokens, data.total_batch_tokens, data.batch_warmup_steps)


def tokens_of_steps(steps: int, data: DataSection) -> int:
    """The tokens of steps 0 ... steps - 1 (a function of the schedule alone: the planner's and the log's count)."""
    warm = min(steps, data.batch_warmup_steps)
    return sum(batch_tokens_at(s, data) for s in range(warm)) + (steps - warm) * data.total_batch_tokens


def _doubling(step: int, start: int, full: int, warmup: int) -> int:
    """`start` doubling in equal stages over `warmup` steps until `full` (full / start: a power of two)."""
    if step >= warmup:
        return full
    stages = (full // start).bit_length() - 1  # doublings until the full value
    return start << (step * stages // warmup)
