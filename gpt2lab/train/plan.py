"""Plan a training run before spending on it: `gpt2lab train --dry-run`, and `data.batch_size = "auto"`.

From the resolved config alone, what the run will need and take: parameters (the model is built on the meta
device: no memory), the token budget and its split into processes x micro-steps, epochs over the prepared data,
each process's peak memory (`gpt2lab.runtime.memory.training_step`, plus this process's own measured runtime), the time
per step from the FLOPs per token, the device's peak and an assumed model FLOPs utilisation (MFU), and the disk the
checkpoints take. The same memory estimate chooses `batch_size = "auto"`, which a real forward + backward then
confirms (`confirm_batch_size`, in the trainer).

A plan is for this machine's device (the config's runtime.device), or for a GPU the user does not have
(`planned_device("h100")`, from published specs). Everything in it is an estimate, and says where it comes from.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gpt2lab.runtime import memory
from gpt2lab.runtime import perf
from gpt2lab.runtime.device import autocast, autocast_dtype, keep_freed_memory, resolve_device
from gpt2lab.errors import GPT2LabError
from gpt2lab.model.config import PRESETS, GPTConfig
from gpt2lab.train.config import AUTO, TrainConfig

GIB = 2**30

# Assumed model FLOPs utilisation when --assume-mfu is not given, with where the number comes from.
# GPUs: llm.c's GPT-2 124M run on 8 x H100 (REFERENCE: 10B tokens in 45.6 min, ~457k tokens/s per GPU at
# 0.80 GFLOP per token = 37 % of 989 TFLOP/s); gpt2lab's own GPU MFU is not measured yet (metrics.jsonl logs it).
# CPUs: the demo preset measured on the development VM against the 1-second matmul peak (see README, Train).
DEFAULT_MFU = {"cuda": (0.35, "llm.c's 8xH100 GPT-2 124M run measured 37 %"),
               "cpu": (0.4, "the shakespeare-cpu demo measured 41-46 % of a 1-second bf16 matmul peak on a quiet "
                                "2-core Zen 4, 28-39 % on a loaded one")}
CUDA_CONTEXT_BYTES = 600 * 2**20  # a planned GPU's CUDA context and library workspaces (~0.5-0.6 GiB with torch)
GPU_USABLE = 0.9  # of a GPU's memory: the rest is headroom for the caching allocator's fragmentation
CPU_USABLE = 0.8  # of the memory available on a CPU, for "auto": the estimate is good to ~20 %, not to the byte
HELLASWAG_EXAMPLES = 10_042
HELLASWAG_TOKENS_PER_ROW = 100  # context + ending, padded to the longest of a batch (rough)
TOKENIZER_FILES_BYTES = 1_500_000  # vocab.json + merges.txt + tokenizer_config.json beside each checkpoint


@dataclass
class DeviceSpec:
    """The device one process trains on, as far as a plan needs it."""

    type: str  # cpu | cuda | mps
    name: str
    memory_bytes: int | None  # what one process may use: a GPU's memory; on a CPU, what is available now
    peak_flops: float | None  # FLOP/s in the precision trained in
    peak_source: str
    amp_dtype: torch.dtype | None  # the autocast dtype (None: float32)
    planned: bool = False  # from --plan-device: published specs, not this machine

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]


# --------------------------------------------------------------------------------------------- the device


def this_device(config: TrainConfig) -> DeviceSpec:
    """The device the config would train on here, with its peak (a CPU's measured, in about a second)."""
    device = resolve_device(config.runtime.device)
    if device.type == "cpu" and config.runtime.threads:
        torch.set_num_threads(config.runtime.threads)  # as the trainer does: the peak depends on it
    spec = device_spec(device, autocast_dtype(config.runtime.precision, device))
    if device.type == "cpu":
        dtype = spec.amp_dtype or torch.float32
        spec.peak_flops = perf.measure_matmul_peak(device, dtype)
        spec.peak_source = f"measured: {dtype} matmul, 1 s, {torch.get_num_threads()} threads".replace("torch.", "")
    return spec


def device_spec(device: torch.device, amp_dtype: torch.dtype | None) -> DeviceSpec:
    """`device`'s name and memory (on a GPU also its published peak; a CPU's is measured by `this_device`)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        spec = perf.gpu_spec(name)
        peak = spec.bf16_flops if spec and amp_dtype is not None else None
        total = torch.cuda.get_device_properties(device).total_memory
        return DeviceSpec("cuda", name, total, peak, "published bf16 dense" if peak else "not in gpt2lab's table",
                          amp_dtype)
    if device.type == "cpu":
        return DeviceSpec("cpu", _cpu_name(), cpu_memory_for_one_process(), None, "not measured", amp_dtype)
    return DeviceSpec(device.type, device.type, None, None, "unknown", amp_dtype)


def planned_device(name: str, precision: str = "auto") -> DeviceSpec:
    """A GPU from the table in gpt2lab.runtime.perf (h100, a100, rtx4090, ...), for planning without one."""
    key = name.lower().replace(" ", "")
    if key not in perf.GPUS:
        raise GPT2LabError(f"unknown --plan-device {name!r}; choose one of {', '.join(perf.GPUS)} (or leave it out "
                           f"to plan for this machine)")
    spec = perf.GPUS[key]
    amp = {"auto": torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]
    return DeviceSpec("cuda", spec.name, spec.memory_bytes, spec.bf16_flops if amp else None,
                      "published bf16 dense" if amp else "fp32: not in gpt2lab's table", amp, planned=True)


def cpu_memory_for_one_process() -> int | None:
    """What a training process could hold here: the memory available now plus what this process holds (a real
    run would start from as much as this one holds: the interpreter and torch)."""
    available = memory.available_bytes("cpu")
    return None if available is None else available + _resident_bytes()


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # no /proc (macOS): the peak so far, close to it after a step
        return memory.peak_bytes("cpu") or 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        model = platform.processor() or "CPU"
    return f"{model}, {os.cpu_count()} cores"


# --------------------------------------------------------------------------------------------- the model


def architecture(config: TrainConfig) -> GPTConfig:
    """The shape of the model the run would train, without its weights: the [model] section, or the config.json
    of the model to fine-tune (a released name, a local directory or run, or one already in the HF cache)."""
    init = config.model.init
    if init == "scratch":
        return config.model.gpt_config()
    if init in PRESETS:
        return GPTConfig.from_preset(init)
    from gpt2lab.hf.format import CONFIG_JSON, read_config
    from gpt2lab.hf.resolve import HUB_ALIASES, resolve_model_dir

    if Path(os.path.expanduser(init)).exists():
        return read_config(resolve_model_dir(init))
    try:  # a hub id: only what the HF cache already holds (a dry run downloads nothing)
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(HUB_ALIASES.get(init, init), CONFIG_JSON)
    except Exception:  # not a valid hub id either (a path that does not exist, say)
        cached = None
    if isinstance(cached, str):
        return read_config(Path(cached).parent)
    raise GPT2LabError(f"cannot plan a fine-tune of {init} without its config.json, and a dry run downloads "
                       f"nothing; fetch it first (gpt2lab inspect {init}) or pass a local directory")


@dataclass
class ParameterCounts:
    total: int  # the tied wte/lm_head counted once
    cast: int  # in the matmul layers, which autocast copies (the Conv1D layers and lm_head = wte)
    muon: int  # trained by Muon under optim.name = muon (0 under adamw)


def parameter_counts(arch: GPTConfig, optimizer: str) -> ParameterCounts:
    from gpt2lab.model.gpt import GPT, Conv1D
    from gpt2lab.train.optim import muon_parameter_names

    with torch.device("meta"):  # shapes only: no memory, no time
        model = GPT(arch, init_weights=False)
    cast = {id(p): p.numel() for m in model.modules() if isinstance(m, (Conv1D, torch.nn.Linear))
            for p in m.parameters()}
    named = dict(model.named_parameters())
    muon = sum(named[n].numel() for n in muon_parameter_names(model)) if optimizer == "muon" else 0
    return ParameterCounts(model.num_parameters(), sum(cast.values()), muon)


# --------------------------------------------------------------------------------------------- the batch


def grad_accum_steps(total_batch_tokens: int, batch_size: int, seq_len: int, world_size: int, explicit: int = 0) -> int:
    """Micro-steps per optimizer step, so that batch_size x seq_len x world size x micro-steps is the token budget.
    `explicit` (data.grad_accum, 0: not given) must agree with it."""
    per_micro_step = batch_size * seq_len * world_size
    if total_batch_tokens % per_micro_step:
        raise GPT2LabError(
            f"data.total_batch_tokens ({total_batch_tokens:,}) is not divisible by data.batch_size x data.seq_len x "
            f"world size ({batch_size} x {seq_len} x {world_size} = {per_micro_step:,}); make it a multiple, e.g. "
            f"data.total_batch_tokens={max(1, round(total_batch_tokens / per_micro_step)) * per_micro_step}")
    accum = total_batch_tokens // per_micro_step
    if explicit and explicit != accum:
        raise GPT2LabError(
            f"data.grad_accum is {explicit} but data.total_batch_tokens / (data.batch_size x data.seq_len x world "
            f"size) = {total_batch_tokens:,} / ({batch_size} x {seq_len} x {world_size}) = {accum}; set "
            f"data.grad_accum={accum}, or 0 to let gpt2lab compute it")
    return accum


def batch_size_choices(total_batch_tokens: int, seq_len: int, world_size: int) -> list[int]:
    """Every micro-batch size that keeps the token budget exact, largest first: the divisors of the sequences each
    process computes per step."""
    sequences, remainder = divmod(total_batch_tokens, seq_len * world_size)
    if remainder or sequences == 0:
        raise GPT2LabError(f"data.batch_size = \"auto\" needs data.total_batch_tokens ({total_batch_tokens:,}) to be a "
                           f"multiple of data.seq_len x world size ({seq_len} x {world_size}); make it one")
    return [b for b in range(sequences, 0, -1) if sequences % b == 0]


@dataclass
class MemoryModel:
    """Everything but the batch size that one process's step memory depends on."""

    arch: GPTConfig
    params: ParameterCounts
    device: DeviceSpec
    world_size: int
    runtime: int

    def estimate(self, batch_size: int, seq_len: int, grad_accum: int) -> memory.TrainingMemory:
        return memory.training_step(
            self.arch, batch_size, seq_len, params=self.params.total, cast_params=self.params.cast,
            muon_params=self.params.muon, amp_bytes=self.device.amp_dtype.itemsize if self.device.amp_dtype else None,
            grad_accum=grad_accum, world_size=self.world_size, runtime=self.runtime, cpu_heap=self.device.type == "cpu")

    def budget(self, local_processes: int = 1) -> int | None:
        """Bytes one process may plan to use for `auto`: a fraction of its device's (or its share of the CPU's)."""
        if self.device.memory_bytes is None:
            return None
        usable = GPU_USABLE if self.device.type == "cuda" else CPU_USABLE
        return int(self.device.memory_bytes * usable / local_processes)


def choose_batch_size(model: MemoryModel, total_batch_tokens: int, seq_len: int, local_processes: int = 1) -> int:
    """The largest micro-batch whose estimated step fits the device's budget (all of them when memory is unknown)."""
    choices = batch_size_choices(total_batch_tokens, seq_len, model.world_size)
    budget = model.budget(local_processes)
    for b in choices:
        accum = total_batch_tokens // (b * seq_len * model.world_size)
        if budget is None or model.estimate(b, seq_len, accum).total <= budget:
            return b
    smallest = model.estimate(1, seq_len, choices[0])
    raise GPT2LabError(
        f"even data.batch_size 1 would need ~{_gib(smallest.total)} per process for one step, more than the "
        f"{_gib(budget)} {model.device.name} offers it; lower data.seq_len, use a smaller model, or train on a "
        f"device with more memory")


def confirm_batch_size(net, choices: list[int], seq_len: int, device: torch.device, amp_dtype, hold_back: int,
                       log=print) -> int:
    """Run one real forward + backward at each size, largest first, until one runs: on a GPU, an out-of-memory
    error moves on to the next smaller size. `hold_back` bytes (the optimizer state the first step will allocate)
    are held while it runs, so the trial needs what a real step needs. Uses no global RNG; leaves no gradients."""
    for i, batch_size in enumerate(choices):
        try:
            _trial_step(net, batch_size, seq_len, device, amp_dtype, hold_back)
        except torch.OutOfMemoryError:
            pass  # handled below: until the except block ends, its traceback holds the failed attempt's tensors
        else:
            if device.type == "cuda":  # the log's peak_mem_mb is then the training's own
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            return batch_size
        net.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if i + 1 == len(choices):
            raise GPT2LabError(f"data.batch_size auto: even 1 sequence of {seq_len} tokens runs out of memory on "
                               f"{device}; lower data.seq_len or use a smaller model")
        log(f"data.batch_size auto: {batch_size} ran out of memory on {device}; trying {choices[i + 1]}")
    raise AssertionError("unreachable: the last choice either runs or raises")


def _trial_step(net, batch_size: int, seq_len: int, device, amp_dtype, hold_back: int) -> None:
    held = torch.empty(hold_back, dtype=torch.uint8, device=device) if device.type == "cuda" else None  # noqa: F841
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, net.config.vocab_size, (batch_size, seq_len + 1), generator=generator).to(device)
    with autocast(device, amp_dtype):
        loss = net(x[:, :-1], x[:, 1:])[1]
    loss.backward()
    net.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------------------------- the runtime


def runtime_bytes(device: DeviceSpec, optimizer: str) -> int:
    """The process's own memory, beyond the model's tensors. On this machine's CPU: this process's resident memory
    after a training step of a tiny model in the same precision and optimizer (which loads and touches the same
    kernels a real step does: ~0.3 GiB with torch 2.x); on a GPU: the CUDA context."""
    if device.type == "cuda":
        if device.planned:
            return CUDA_CONTEXT_BYTES
        return memory.cuda_context_bytes(torch.cuda.current_device())
    if device.type != "cpu":
        return 0
    from gpt2lab.model.gpt import GPT
    from gpt2lab.train.optim import make_optimizer

    keep_freed_memory()  # as the trainer does: it decides what stays resident
    cpu = torch.device("cpu")
    with torch.random.fork_rng(devices=[]):  # the trainer's random state is not this tiny model's business
        net = GPT(GPTConfig(block_size=8, vocab_size=64, n_layer=1, n_head=1, n_embd=32))
    optim = make_optimizer(net, dataclasses.replace(TrainConfig().optim, name=optimizer), cpu)
    x = torch.arange(16).view(2, 8) % 64
    for _ in range(2):
        with autocast(cpu, device.amp_dtype):
            loss = net(x, x)[1]
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
    return _resident_bytes()


# --------------------------------------------------------------------------------------------- the plan


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
        return self.tokens_per_step * self.config.schedule.max_steps

    @property
    def est_total_seconds(self) -> float | None:
        if self.est_step_seconds is None:
            return None
        return self.est_step_seconds * self.config.schedule.max_steps + (self.est_eval_seconds or 0.0)

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
            "fits": self.fits, "flops_per_token": self.flops_per_token, "peak_flops": self.device.peak_flops,
            "peak_flops_source": self.device.peak_source, "assumed_mfu": self.mfu, "mfu_source": self.mfu_source,
            "est_step_seconds": self.est_step_seconds, "est_eval_seconds": self.est_eval_seconds,
            "est_total_seconds": total,
            "device_hours": None if total is None else total * self.world_size / 3600,
            "checkpoint_bytes": self.checkpoint_bytes, "checkpoint_keep": keep,
            "checkpoint_disk_bytes": self.checkpoint_bytes * keep,
            "checkpoint_disk_peak_bytes": self.checkpoint_bytes * (keep + 1), "notes": self.notes,
        }


def make_plan(config: TrainConfig, device: DeviceSpec, world_size: int = 1, assume_mfu: float | None = None,
              local_processes: int | None = None) -> Plan:
    """Plan `config` on `world_size` processes of `device`. local_processes: how many of them share this machine's
    memory (a CPU plan; default all of them)."""
    arch = architecture(config)
    data = config.data
    if data.seq_len > arch.block_size:
        raise GPT2LabError(f"data.seq_len ({data.seq_len}) is longer than the model's context ({arch.block_size}); "
                           f"lower data.seq_len or raise model.block_size")
    local = local_processes or (world_size if device.type == "cpu" else 1)
    params = parameter_counts(arch, config.optim.name)
    model = MemoryModel(arch, params, device, world_size, runtime_bytes(device, config.optim.name))
    auto = data.batch_size == AUTO
    if auto:
        config = dataclasses.replace(config, data=dataclasses.replace(
            data, batch_size=choose_batch_size(model, data.total_batch_tokens, data.seq_len, local)))
        data = config.data
    accum = grad_accum_steps(data.total_batch_tokens, data.batch_size, data.seq_len, world_size, data.grad_accum)
    estimate = model.estimate(data.batch_size, data.seq_len, accum)
    budget = None if device.memory_bytes is None else device.memory_bytes * (GPU_USABLE if device.type == "cuda" else 1)
    mfu, mfu_source = (assume_mfu, "--assume-mfu") if assume_mfu else DEFAULT_MFU.get(device.type, DEFAULT_MFU["cuda"])
    plan = Plan(config, device, world_size, auto, accum, arch, params, estimate,
                fits=None if budget is None else estimate.total * local <= budget,
                flops_per_token=perf.flops_per_token(params.total, arch.n_layer, arch.n_embd, data.seq_len),
                mfu=mfu, mfu_source=mfu_source, checkpoint_bytes=checkpoint_bytes(params, arch))
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

    cfg = plan.config
    try:
        manifest = read_manifest(cfg.data.dir)
    except DataError as e:
        plan.notes.append(f"data: {e} (epochs unknown)")
        return
    if manifest["vocab_size"] > plan.arch.vocab_size:
        raise GPT2LabError(f"{cfg.data.dir} has token ids up to {manifest['vocab_size'] - 1} but the model's "
                           f"vocabulary is {plan.arch.vocab_size}; set model.vocab_size={manifest['vocab_size']} or "
                           f"more (50304 is the fast choice)")
    plan.data_tokens = sum(shard["tokens"] for shard in manifest["splits"].get("train", []))
    chunk = cfg.data.batch_size * cfg.data.seq_len
    steps_per_epoch = max(plan.data_tokens - 1, 0) // chunk // (plan.world_size * plan.grad_accum)
    if steps_per_epoch == 0:
        raise GPT2LabError(f"{cfg.data.dir} has {plan.data_tokens:,} train tokens, too few for one step of "
                           f"{plan.tokens_per_step:,}; lower data.total_batch_tokens or prepare more data")
    plan.epochs = cfg.schedule.max_steps / steps_per_epoch


def checkpoint_bytes(params: ParameterCounts, arch: GPTConfig) -> int:
    """One checkpoint directory: float32 weights (model.safetensors), the optimizer state (training_state.pt:
    AdamW's two moments, Muon's one buffer) and GPT-2's tokenizer files."""
    optimizer = 8 * (params.total - params.muon) + 4 * params.muon
    tokenizer = TOKENIZER_FILES_BYTES if arch.vocab_size >= 50257 else 0
    return 4 * params.total + optimizer + tokenizer


def _add_notes(plan: Plan, local: int) -> None:
    cfg, notes = plan.config, plan.notes
    if plan.fits is False:
        need = plan.memory.total * local
        notes.append(f"does not fit: ~{_gib(need)} needed, {_gib(plan.device.memory_bytes)} on {plan.device.name}; "
                     f"lower data.batch_size (gradient accumulation keeps the step's tokens) or set it to \"auto\"")
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
             f"  memory   ~{_gib(mem.total)} per {'process' if dev.type == 'cpu' else 'GPU'} at a step's peak "
             f"({dev.precision}, {optimizer_name(cfg)}): {_fits_line(plan)}",
             f"           {_breakdown(mem)}",
             f"  time     {_time_line(plan)}",
             f"  disk     {_disk_line(plan)}"]
    lines += [f"  note     {note}" for note in plan.notes]
    return "\n".join(lines)


def _disk_line(plan: Plan) -> str:
    each, keep = plan.checkpoint_bytes, plan.config.checkpoint.keep
    return (f"checkpoints ~{_gb(each)} each: {_gb(each * keep)} for checkpoint.keep = {keep} "
            f"({_gb(each * (keep + 1))} while the next one is written)")


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
    return f"{'fits' if plan.fits else 'DOES NOT FIT'} in {_gib(dev.memory_bytes)} {what}"


def _breakdown(mem: memory.TrainingMemory) -> str:
    names = {"runtime": "runtime", "weights": "weights", "gradients": "gradients", "optimizer": "optimizer",
             "autocast_weights": "autocast copies", "activations": "activations", "logits": "logits",
             "ddp_buckets": "DDP buckets", "allocator": "allocator"}
    parts = [f"{label} {_gib(getattr(mem, key))}" for key, label in names.items() if getattr(mem, key)]
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


def _gib(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / GIB:.2f} GiB" if n < 10 * GIB else f"{n / GIB:.1f} GiB"


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n < 10e9 else f"{n / 1e9:.1f} GB"


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

