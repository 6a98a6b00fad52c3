"""Plan a training run before spending on it: `gpt2lab train --dry-run`.

From the resolved config alone, what the run will need and take: parameters (the model is built on the meta
device: no memory), the token budget and its split into processes x micro-steps, epochs over the prepared data,
each process's peak memory (the trainer's own `StepMemory`), the time per step from the FLOPs per token, the
device's peak and an assumed model FLOPs utilisation (MFU), and the disk the checkpoints take.

A plan is for this machine's device (the config's runtime.device), or for a GPU the user does not have
(`--plan-device h100`, from published specs). Everything in it is an estimate, and says where it comes from. This
module reads the trainer's pieces (batch.py, the config); nothing of the trainer's reads it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from gpt2lab.errors import GPT2LabError, ModelNotFoundError
from gpt2lab.model.config import PRESETS, GPTConfig
from gpt2lab.runtime import memory, perf
from gpt2lab.runtime.device import autocast_dtype, resolve_device
from gpt2lab.runtime.hardware import DeviceSpec, device_spec, planned_device
from gpt2lab.train.batch import (GPU_USABLE, ParameterCounts, StepMemory, choose_batch_size, choose_strategy,
                                 grad_accum_steps, parameter_counts, runtime_bytes)
from gpt2lab.train.config import AUTO, TrainConfig
from gpt2lab.train.schedule import tokens_of_steps

# Assumed model FLOPs utilisation when --assume-mfu is not given, with where the number comes from.
DEFAULT_MFU = {"cuda": (0.35, "llm.c's 8xH100 GPT-2 124M run measured 37 %"),
               "cpu": (0.4, "the shakespeare-cpu demo measured 41-46 % of a 1-second bf16 matmul peak on a quiet "
                                "2-core Zen 4, 28-39 % on a loaded one")}
HELLASWAG_EXAMPLES = 10_042
HELLASWAG_TOKENS_PER_ROW = 100  # context + ending, padded to the longest of a batch (rough)
TOKENIZER_FILES_BYTES = 1_500_000  # vocab.json + merges.txt + tokenizer_config.json beside each checkpoint


def plan_device(config: TrainConfig, name: str | None = None) -> DeviceSpec:
    """The device to plan for: a GPU from published specs (`name`: h100, rtx4090, ...), this machine's CPU
    (`name` "cpu", whatever runtime.device says), or, without a name, the device the config would train on here,
    with its peak (a CPU's measured, in about a second)."""
    if name and name.lower() != "cpu":
        return planned_device(name, config.runtime.precision)
    device = resolve_device("cpu" if name else config.runtime.device)
    if device.type == "cpu" and config.runtime.threads:
        torch.set_num_threads(config.runtime.threads)  # as the trainer does: the peak depends on it
    return device_spec(device, autocast_dtype(config.runtime.precision, device), measure_peak=True)


def architecture(config: TrainConfig) -> GPTConfig:
    """The shape of the model the run would train, without its weights: the [model] section, or the config.json
    of the model to fine-tune (a released name, a local directory or run, or a hub id the HF cache holds)."""
    init = config.model.init
    if init == "scratch":
        return config.model.gpt_config()
    if init in PRESETS:
        return GPTConfig.from_preset(init)
    from gpt2lab.hf.format import read_config
    from gpt2lab.hf.resolve import resolve_model_dir

    try:
        return read_config(resolve_model_dir(init, offline=True))  # a dry run downloads nothing
    except ModelNotFoundError as e:
        raise GPT2LabError(f"cannot plan a fine-tune of {init} without its config.json: {e}") from None


@dataclass
class Plan:
    config: TrainConfig  # with data.batch_size resolved
    device: DeviceSpec
    world_size: int
    batch_size_auto: bool
    grad_accum: int
    arch: GPTConfig
    params: ParameterCounts
    memory: memory.TrainingMemory  # per process
    fits: bool | None  # None: the device's memory is unknown
    flops_per_token: float
    mfu: float
    mfu_source: str
    checkpoint_bytes: int
    strategy: str = "ddp"  # ddp | fsdp, as the run would use it
    strategy_reason: str = ""  # why, for parallel.strategy = "auto"
    memory_by_strategy: dict[str, int] = field(default_factory=dict)  # per process, at the plan's micro-batch
    est_step_seconds: float | None = None  # None: no peak FLOP/s for the device
    est_eval_seconds: float | None = None
    data_tokens: int | None = None  # None: data.dir is not a prepared dataset (yet)
    epochs: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def tokens_per_step(self) -> int:
        return self.config.data.total_batch_tokens

    @property
    def total_tokens(self) -> int:
        """As the trainer counts them: fewer than steps x tokens per step with a batch-size warm-up."""
        return tokens_of_steps(self.config.schedule.max_steps, self.config.data)

    @property
    def est_total_seconds(self) -> float | None:
        if self.est_step_seconds is None:
            return None
        full_steps = self.total_tokens / self.tokens_per_step  # a warm-up's small steps take less time
        return self.est_step_seconds * full_steps + (self.est_eval_seconds or 0.0)

    def _fits(self, per_process: int) -> bool | None:
        local = self.world_size if self.device.type == "cpu" else 1
        return None if self.device.memory_bytes is None else per_process * local <= _usable(self.device)

    def to_json(self) -> dict:
        cfg, keep = self.config, self.config.checkpoint.keep
        total = self.est_total_seconds
        return {
            "estimate": True, "params": self.params.total, "n_layer": self.arch.n_layer, "n_embd": self.arch.n_embd,
            "n_head": self.arch.n_head, "vocab_size": self.arch.vocab_size, "seq_len": cfg.data.seq_len,
            "batch_size": cfg.data.batch_size, "batch_size_auto": self.batch_size_auto, "world_size": self.world_size,
            "grad_accum": self.grad_accum, "tokens_per_step": self.tokens_per_step,
            "max_steps": cfg.schedule.max_steps, "total_tokens": self.total_tokens, "data_dir": cfg.data.dir,
            "data_tokens": self.data_tokens, "epochs": self.epochs,
            "device": self.device.name, "device_type": self.device.type, "device_planned": self.device.planned,
            "device_memory_bytes": self.device.memory_bytes, "precision": self.device.precision,
            "memory_per_device_bytes": self.memory.total, "memory_breakdown_bytes": dataclasses.asdict(self.memory),
            "strategy": self.strategy, "strategy_auto": cfg.parallel.strategy == "auto",
            "strategy_reason": self.strategy_reason,
            "activation_checkpointing": cfg.runtime.activation_checkpointing,
            "memory_per_device_bytes_by_strategy": self.memory_by_strategy,
            "fits_by_strategy": {s: self._fits(n) for s, n in self.memory_by_strategy.items()},
            "fits": self.fits, "flops_per_token": self.flops_per_token, "peak_flops": self.device.peak_flops,
            "peak_flops_source": self.device.peak_source, "assumed_mfu": self.mfu, "mfu_source": self.mfu_source,
            "est_step_seconds": self.est_step_seconds, "est_eval_seconds": self.est_eval_seconds,
            "est_total_seconds": total,
            "device_hours": None if total is None else total * self.world_size / 3600,
            "checkpoint_bytes": self.checkpoint_bytes, "checkpoint_keep": keep,
            "checkpoint_disk_bytes": self.checkpoint_bytes * keep,
            "checkpoint_disk_peak_bytes": self.checkpoint_bytes * (keep + 1), "notes": self.notes,
        }


def _usable(device: DeviceSpec) -> float:
    """What a plan may fill of a device: 90 % of a GPU (the caching allocator's headroom), what a CPU has free."""
    return device.memory_bytes * (GPU_USABLE if device.type == "cuda" else 1)


def make_plan(config: TrainConfig, device: DeviceSpec, world_size: int = 1, assume_mfu: float | None = None,
              local_processes: int | None = None) -> Plan:
    """Plan `config` on `world_size` processes of `device`. local_processes: how many of them share this machine's
    memory (a CPU plan; default all of them)."""
    arch = architecture(config)
    data = config.data
    arch.check_context(data.seq_len, "data.seq_len", "lower it or raise model.block_size")
    local = local_processes or (world_size if device.type == "cpu" else 1)
    params = parameter_counts(arch, config.optim.name, averaged=config.optim.ema > 0, optim=config.optim)
    step_memory = StepMemory(arch, params, device, world_size, runtime_bytes(device, config.optim.name),
                             activation_checkpointing=config.runtime.activation_checkpointing)
    strategy, reason = config.parallel.strategy, ""
    if strategy == "auto":
        strategy, reason = choose_strategy(step_memory, data, local)
    step_memory = step_memory.with_strategy(strategy)
    auto = data.batch_size == AUTO
    if auto:
        config = dataclasses.replace(config, data=dataclasses.replace(
            data, batch_size=choose_batch_size(step_memory, data.total_batch_tokens, data.seq_len, local)))
        data = config.data
    accum = grad_accum_steps(data.total_batch_tokens, data.batch_size, data.seq_len, world_size, data.grad_accum)
    estimate = step_memory.estimate(data.batch_size, data.seq_len, accum)
    both = {s: step_memory.with_strategy(s).estimate(data.batch_size, data.seq_len, accum).total
            for s in ("ddp", "fsdp")} if world_size > 1 else {strategy: estimate.total}
    mfu, mfu_source = (assume_mfu, "--assume-mfu") if assume_mfu else DEFAULT_MFU.get(device.type, DEFAULT_MFU["cuda"])
    plan = Plan(config, device, world_size, auto, accum, arch, params, estimate,
                fits=None if device.memory_bytes is None else estimate.total * local <= _usable(device),
                flops_per_token=perf.flops_per_token(params.total, arch.n_layer, arch.n_embd, data.seq_len),
                mfu=mfu, mfu_source=mfu_source, checkpoint_bytes=checkpoint_bytes(params, arch), strategy=strategy,
                strategy_reason=reason, memory_by_strategy=both)
    _add_time(plan)
    _add_data(plan)
    _add_notes(plan, local)
    return plan


def _add_time(plan: Plan) -> None:
    """Seconds per step: the step's FLOPs over (processes x peak x MFU); evaluation: forward passes (a third of a
    training step's FLOPs per token) over the validation batches and HellaSwag, as often as the config runs them."""
    peak = plan.device.peak_flops
    if not peak:
        return
    rate = plan.world_size * peak * plan.mfu
    cfg = plan.config
    plan.est_step_seconds = plan.tokens_per_step * plan.flops_per_token / rate
    forward = plan.flops_per_token / 3
    steps, ev = cfg.schedule.max_steps, cfg.eval
    val_tokens = _times(steps, ev.val_every, last=True) * ev.val_batches * cfg.data.batch_size * cfg.data.seq_len
    hellaswag_rows = _times(steps, ev.hellaswag_every, last=bool(ev.hellaswag_every)) * 4 * (
        ev.hellaswag_limit or HELLASWAG_EXAMPLES)
    # validation: every process its own val_batches; HellaSwag: the examples are split across processes
    plan.est_eval_seconds = (val_tokens * plan.world_size + hellaswag_rows * HELLASWAG_TOKENS_PER_ROW) * forward / rate


def _times(steps: int, every: int, last: bool) -> int:
    """How often something the trainer does every `every` steps (and after the last one) happens in `steps`."""
    if every <= 0:
        return 1 if last else 0
    return steps // every + (1 if last and steps % every else 0)


def _add_data(plan: Plan) -> None:
    """Tokens in the prepared train split and the epochs the run makes over them, as the loader counts them: the
    split cut into chunks of B x T tokens, an epoch a whole number of steps."""
    from gpt2lab.data import DataError, read_manifest
    from gpt2lab.data.manifest import check_vocabulary

    cfg = plan.config
    try:
        manifest = read_manifest(cfg.data.dir)
    except DataError as e:
        plan.notes.append(f"data: {e} (epochs unknown)")
        return
    check_vocabulary(cfg.data.dir, manifest, plan.arch.vocab_size, "the model's vocabulary")
    plan.data_tokens = sum(shard["tokens"] for shard in manifest["splits"].get("train", []))
    chunk = cfg.data.batch_size * cfg.data.seq_len
    steps_per_epoch = max(plan.data_tokens - 1, 0) // chunk // (plan.world_size * plan.grad_accum)
    if steps_per_epoch == 0:
        raise GPT2LabError(f"{cfg.data.dir} has {plan.data_tokens:,} train tokens, too few for one step of "
                           f"{plan.tokens_per_step:,}; lower data.total_batch_tokens or prepare more data")
    plan.epochs = plan.total_tokens / (steps_per_epoch * plan.tokens_per_step)


def checkpoint_bytes(params: ParameterCounts, arch: GPTConfig) -> int:
    """One checkpoint directory: float32 weights (model.safetensors), the optimizer state and the weights' moving
    average if any (training_state.pt) and GPT-2's tokenizer files."""
    tokenizer = TOKENIZER_FILES_BYTES if arch.vocab_size >= 50257 else 0
    return 4 * params.total + memory.optimizer_state_bytes(params.total, params.muon, params.averaged) + tokenizer


def _add_notes(plan: Plan, local: int) -> None:
    cfg, notes = plan.config, plan.notes
    if plan.fits is False:
        need = plan.memory.total * local
        notes.append(f"does not fit: ~{memory.format_bytes(need)} needed, {memory.format_bytes(plan.device.memory_bytes)}"
                     f" on {plan.device.name}; lower data.batch_size (gradient accumulation keeps the step's tokens) "
                     f"or set it to \"auto\"" + ("" if plan.strategy == "fsdp" or plan.world_size == 1 else
                                                  ", or shard the model: parallel.strategy = \"fsdp\""))
    if cfg.data.align_to_documents:
        notes.append("data.align_to_documents: rows skip the document tails they cut, so an epoch is shorter than "
                     "counted here (the run's log says by how much)")
    if cfg.data.batch_warmup_steps:
        notes.append(f"batch-size warm-up ({cfg.data.batch_start_tokens:,} -> {cfg.data.total_batch_tokens:,} tokens "
                     f"per step over {cfg.data.batch_warmup_steps:,} steps): the same micro-batch, fewer micro-steps "
                     f"early; the token and time totals count them")
    if cfg.data.seq_len_warmup_steps:
        notes.append(f"sequence-length warm-up ({cfg.data.seq_len_start} -> {cfg.data.seq_len} over "
                     f"{cfg.data.seq_len_warmup_steps:,} steps): memory is estimated at the full length, the "
                     f"largest; a step's tokens are the same at every length")
    if plan.epochs is not None and plan.epochs > 1:
        notes.append(f"the run reads the training data {plan.epochs:.1f} times (epochs > 1)")
    if cfg.runtime.compile and plan.device.type == "cuda":
        notes.append("runtime.compile: torch.compile usually needs less activation memory than this eager-mode "
                     "estimate, and adds minutes of compilation before the first step")
    if plan.device.type == "cuda" and plan.device.amp_dtype is None:
        notes.append("fp32 on a GPU: no published peak in gpt2lab's table, so no time estimate")


# --------------------------------------------------------------------------------------------- printing


def format_plan(plan: Plan) -> str:
    """The plan as the few lines a user about to rent a machine reads."""
    cfg, dev, mem = plan.config, plan.device, plan.memory
    where = f"{plan.world_size} x {dev.name}" if plan.world_size > 1 else dev.name
    lines = [f"plan (estimates) for {where}" + (" (published specs, not this machine)" if dev.planned else ""),
             f"  model    {plan.params.total:,} parameters ({plan.arch.n_layer} layers, {plan.arch.n_embd} wide, "
             f"{plan.arch.n_head} heads, context {plan.arch.block_size}, vocab {plan.arch.vocab_size:,})",
             f"  batch    {plan.tokens_per_step:,} tokens/step = {cfg.data.batch_size}"
             f"{' (auto)' if plan.batch_size_auto else ''} x {cfg.data.seq_len} x {plan.world_size} process(es) x "
             f"{plan.grad_accum} micro-step(s); {cfg.schedule.max_steps:,} steps = {_count(plan.total_tokens)} tokens",
             f"  data     {_data_line(plan)}",
             f"  memory   ~{memory.format_bytes(mem.total)} per {'process' if dev.type == 'cpu' else 'GPU'} at a "
             f"step's peak ({dev.precision}, {optimizer_name(cfg)}, {_strategy_name(plan)}): {_fits_line(plan)}",
             f"           {_breakdown(mem, averaged=plan.params.averaged > 0)}",
             *_strategies_line(plan),
             f"  time     {_time_line(plan)}",
             f"  disk     {_disk_line(plan)}"]
    lines += [f"  note     {note}" for note in plan.notes]
    return "\n".join(lines)


def _disk_line(plan: Plan) -> str:
    each, keep = plan.checkpoint_bytes, plan.config.checkpoint.keep
    return (f"checkpoints ~{memory.format_bytes(each)} each: {memory.format_bytes(each * keep)} for checkpoint.keep = "
            f"{keep} ({memory.format_bytes(each * (keep + 1))} while the next one is written)")


def _strategy_name(plan: Plan) -> str:
    name = {"ddp": "DDP" if plan.world_size > 1 else "one process", "fsdp": "FSDP"}[plan.strategy]
    if plan.config.runtime.activation_checkpointing:
        name += ", activation checkpointing"
    return name + (" (auto)" if plan.config.parallel.strategy == "auto" and plan.world_size > 1 else "")


def _strategies_line(plan: Plan) -> list[str]:
    """Both strategies side by side, when there are processes to shard over."""
    if len(plan.memory_by_strategy) < 2:
        return []
    parts = [f"{name.upper()} ~{memory.format_bytes(n)} ({'fits' if plan._fits(n) else 'does not fit'})"
             if plan._fits(n) is not None else f"{name.upper()} ~{memory.format_bytes(n)}"
             for name, n in plan.memory_by_strategy.items()]
    return [f"  strategy {', '.join(parts)} per device at micro-batch {plan.config.data.batch_size}"
            + (f": {plan.strategy_reason}" if plan.strategy_reason else "")]


def optimizer_name(cfg: TrainConfig) -> str:
    return "Muon + AdamW" if cfg.optim.name == "muon" else "AdamW"


def _data_line(plan: Plan) -> str:
    if plan.epochs is None:
        return f"{plan.config.data.dir}: not readable yet, epochs unknown (see note)"
    return f"{plan.config.data.dir}: {plan.data_tokens:,} train tokens, {plan.epochs:.2f} epochs"


def _fits_line(plan: Plan) -> str:
    dev = plan.device
    if plan.fits is None:
        return "this device's memory is unknown"
    what = "available now" if dev.type == "cpu" else "on the GPU"
    return f"{'fits' if plan.fits else 'DOES NOT FIT'} in {memory.format_bytes(dev.memory_bytes)} {what}"


def _breakdown(mem: memory.TrainingMemory, averaged: bool = False) -> str:
    names = {"runtime": "runtime", "weights": "weights", "gradients": "gradients",
             "optimizer": "optimizer + weight average (optim.ema)" if averaged else "optimizer",
             "autocast_weights": "autocast copies", "activations": "activations", "logits": "logits",
             "ddp_buckets": "DDP buckets", "gathered_weights": "gathered weights", "reduce_buffers": "reduce buffers",
             "allocator": "allocator"}
    parts = [f"{label} {memory.format_bytes(getattr(mem, key))}" for key, label in names.items() if getattr(mem, key)]
    return " + ".join(parts)


def _time_line(plan: Plan) -> str:
    dev = plan.device
    if plan.est_step_seconds is None:
        return "unknown (no peak FLOP/s for this device)"
    peak = f"{dev.peak_flops / 1e12:,.1f} TFLOP/s" if dev.peak_flops >= 1e12 else f"{dev.peak_flops / 1e9:,.0f} GFLOP/s"
    total = plan.est_total_seconds
    hours = f", {total * plan.world_size / 3600:,.1f} {'GPU' if dev.type == 'cuda' else 'device'}-hours" \
        if plan.world_size > 1 or dev.type == "cuda" else ""
    return (f"~{_duration(plan.est_step_seconds)}/step ({plan.tokens_per_step / plan.est_step_seconds:,.0f} tokens/s) "
            f"at an assumed {plan.mfu:.0%} MFU ({plan.mfu_source}) of {peak} ({dev.peak_source}); "
            f"~{_duration(total)} in all (evaluation ~{_duration(plan.est_eval_seconds or 0)}){hours}")


def _count(n: int) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.2f}{suffix}"
    return str(n)


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 72 * 3600 else f"{seconds / 86400:.1f} days"
