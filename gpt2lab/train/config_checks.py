"""The values that parse but make no sense, caught before any work is done."""

import dataclasses
import math

from gpt2lab.train.config import AUTO, ConfigError, OptimSection, TrainConfig
from gpt2lab.train.muon import COEFFICIENT_SCHEDULES, POLAR_EXPRESS


MUON_KEYS = tuple(f"optim.{f.name}" for f in dataclasses.fields(OptimSection)
                  if f.name.startswith("muon_") or f.name == "cautious_wd")  # cautious_wd: Muon's decay only


def validate(config: TrainConfig, given=()) -> None:
    """Values that parse but make no sense, caught before any work is done. `given`: the keys the user set
    (preset, file, overrides), to refuse Muon settings in an AdamW run rather than silently ignore them. The
    AdamW keys (lr, min_lr, betas, eps, weight_decay) are used by both optimizers (by muon for the embeddings,
    head, gains and biases), so they are never refused."""
    positive = ["model.n_layer", "model.n_head", "model.n_embd", "model.block_size", "model.vocab_size",
                "data.batch_size", "data.seq_len", "data.total_batch_tokens", "schedule.max_steps"]
    flat = config.flat()
    if config.data.batch_size == AUTO:
        positive.remove("data.batch_size")
        if config.data.grad_accum:
            raise ConfigError(f"data.batch_size = \"auto\" chooses the accumulation itself (keeping "
                              f"data.total_batch_tokens), but data.grad_accum is {config.data.grad_accum}; drop "
                              f"data.grad_accum or give data.batch_size a number")
        if config.data.batch_warmup_steps:
            raise ConfigError("data.batch_size = \"auto\" does not yet choose a micro-batch that also divides a "
                              "batch-size warm-up's first steps; give data.batch_size a number")
    for key in positive:
        if flat[key] <= 0:
            raise ConfigError(f"{key} must be positive, got {flat[key]}")
    for key in ["data.grad_accum", "schedule.warmup_steps",
                "eval.val_every", "eval.val_batches", "eval.sample_every", "eval.hellaswag_every",
                "checkpoint.every", "runtime.threads", "eval.sample_count", "eval.sample_tokens"]:
        if flat[key] < 0:
            raise ConfigError(f"{key} must not be negative, got {flat[key]}")
    optim, schedule = config.optim, config.schedule
    _check_warmups(config.data, schedule)
    _check_optimizer(optim, given)
    _check_speedrun_options(optim, schedule)
    if schedule.name not in ("cosine", "wsd"):
        raise ConfigError(f"schedule.name must be cosine or wsd, got '{schedule.name}'")
    if not 0 < schedule.decay_fraction <= 1:
        raise ConfigError(f"schedule.decay_fraction must be in (0, 1], got {schedule.decay_fraction}")
    if config.checkpoint.keep < 1:
        raise ConfigError(f"checkpoint.keep must be at least 1, got {config.checkpoint.keep}")
    if config.parallel.strategy not in ("ddp", "fsdp", "auto"):
        raise ConfigError(f"parallel.strategy must be ddp, fsdp or auto, got '{config.parallel.strategy}'")
    if config.optim.ema and config.parallel.strategy == "fsdp":
        raise ConfigError("optim.ema is not supported with parallel.strategy = fsdp yet (the average would be "
                          "sharded); use ddp, or drop optim.ema")
    if config.runtime.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"runtime.precision must be auto, fp32, bf16 or fp16, got '{config.runtime.precision}'")
    if config.model.zero_init_projections and config.model.init != "scratch":
        raise ConfigError(f"model.zero_init_projections initialises a model trained from scratch, but model.init is "
                          f"'{config.model.init}' (fine-tuning keeps its weights); drop it")
    if config.model.init == "scratch" and config.model.n_embd % config.model.n_head:
        raise ConfigError(f"model.n_embd ({config.model.n_embd}) must be divisible by model.n_head ({config.model.n_head})")


def _check_warmups(data, schedule) -> None:
    """The sequence-length and batch-size warm-ups (schedule.seq_len_at, batch_tokens_at): a start that halves the
    full value a whole number of times, a warm-up inside the run."""
    for steps_key, start_key, full_key in [("seq_len_warmup_steps", "seq_len_start", "seq_len"),
                                           ("batch_warmup_steps", "batch_start_tokens", "total_batch_tokens")]:
        warmup, start, full = (getattr(data, k) for k in (steps_key, start_key, full_key))
        if not warmup and not start:
            continue
        if warmup <= 0 or start <= 0:
            raise ConfigError(f"a warm-up needs both data.{steps_key} and data.{start_key} positive (got {warmup} "
                              f"and {start}); set both, or both to 0 for none")
        ratio = full // start
        if start >= full or full % start or ratio & (ratio - 1):
            raise ConfigError(f"data.{start_key} must be data.{full_key} ({full}) divided by a power of two, e.g. "
                              f"{max(full // 4, 1)}, got {start}")
        if warmup > schedule.max_steps:
            raise ConfigError(f"data.{steps_key} ({warmup}) must not exceed schedule.max_steps "
                              f"({schedule.max_steps}); shorten the warm-up (--set data.{steps_key}=N), or turn it "
                              f"off (--set data.{steps_key}=0 --set data.{start_key}=0)")


# Every optimizer key's allowed range, checked here so that a bad value is one line naming the key rather than
# PyTorch's ValueError traceback from deep inside the optimizer's constructor (or, for an infinite LR, weights
# that turn non-finite at the first step). Both optimizers use the AdamW keys (Muon for the embeddings, head,
# gains and biases).
_POSITIVE, _NOT_NEGATIVE, _UNIT = "positive", "not negative", "in [0, 1)"
_OPTIM_RANGES = {
    "lr": _POSITIVE, "min_lr": _NOT_NEGATIVE, "weight_decay": _NOT_NEGATIVE, "beta1": _UNIT, "beta2": _UNIT,
    "eps": _POSITIVE, "grad_clip": _NOT_NEGATIVE,
    "muon_lr": _POSITIVE, "muon_momentum": _UNIT, "muon_weight_decay": _NOT_NEGATIVE,
}


def _in_range(value: float, allowed: str) -> bool:
    if allowed == _POSITIVE:
        return value > 0
    if allowed == _NOT_NEGATIVE:
        return value >= 0
    return 0 <= value < 1


def _check_optimizer(optim, given=()) -> None:
    for name, allowed in _OPTIM_RANGES.items():
        value = getattr(optim, name)
        if not math.isfinite(value):
            raise ConfigError(f"optim.{name} must be a finite number, got {value}")
        if not _in_range(value, allowed):
            raise ConfigError(f"optim.{name} must be {allowed}, got {value}")
    if optim.min_lr > optim.lr:
        raise ConfigError(f"optim.min_lr ({optim.min_lr}) must not exceed optim.lr ({optim.lr})")
    if optim.name not in ("adamw", "muon"):
        raise ConfigError(f"optim.name must be adamw or muon, got '{optim.name}'")
    if optim.name == "adamw":
        muon_given = [k for k in MUON_KEYS if k in given]
        if muon_given:
            raise ConfigError(f"{muon_given[0]} is a Muon setting but optim.name is adamw; add optim.name=muon "
                              f"or drop it")
    if optim.muon_ns_steps < 1:
        raise ConfigError(f"optim.muon_ns_steps must be at least 1, got {optim.muon_ns_steps}")
    if optim.muon_ns_dtype not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"optim.muon_ns_dtype must be auto, bf16 or fp32, got '{optim.muon_ns_dtype}'")


def _check_speedrun_options(optim, schedule) -> None:
    """The Muon options of the speed-run era (train/muon.py), off by default."""
    if optim.muon_ns_coefficients not in COEFFICIENT_SCHEDULES:
        raise ConfigError(f"optim.muon_ns_coefficients must be {' or '.join(COEFFICIENT_SCHEDULES)}, "
                          f"got '{optim.muon_ns_coefficients}'")
    if optim.muon_ns_coefficients == "polar_express" and optim.muon_ns_steps > len(POLAR_EXPRESS):
        raise ConfigError(f"optim.muon_ns_steps must be at most {len(POLAR_EXPRESS)} with polar_express "
                          f"coefficients (one per iteration), got {optim.muon_ns_steps}")
    if not 0 <= optim.muon_normuon_beta2 < 1:
        raise ConfigError(f"optim.muon_normuon_beta2 must be in [0, 1), got {optim.muon_normuon_beta2}")
    if not 0 <= optim.muon_momentum_start < 1:
        raise ConfigError(f"optim.muon_momentum_start must be in [0, 1), got {optim.muon_momentum_start}")
    if not 0 <= optim.muon_momentum_warmup_steps <= schedule.max_steps:
        raise ConfigError(f"optim.muon_momentum_warmup_steps must be in [0, schedule.max_steps = "
                          f"{schedule.max_steps}], got {optim.muon_momentum_warmup_steps}")
    if not (0 <= optim.ema < 1):  # NaN too
        raise ConfigError(f"optim.ema must be in (0, 1), e.g. 0.99 (or 0: off), got {optim.ema}")
    if optim.cautious_wd and optim.name == "muon" and optim.muon_weight_decay == 0:
        raise ConfigError("optim.cautious_wd changes how Muon's weight decay is applied, but "
                          "optim.muon_weight_decay is 0; set it or drop optim.cautious_wd")
    if optim.adamw_cautious_wd and optim.weight_decay == 0:
        raise ConfigError("optim.adamw_cautious_wd changes how AdamW's weight decay is applied, but "
                          "optim.weight_decay is 0; set it or drop optim.adamw_cautious_wd")
