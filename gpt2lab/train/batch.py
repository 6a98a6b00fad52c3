"""A step's batch: how data.total_batch_tokens splits into micro-batch x sequence x processes x micro-steps, the
memory one process's step needs for a micro-batch (`StepMemory`, over `gpt2lab.runtime.memory`'s estimator), and
`data.batch_size = "auto"`: the largest micro-batch whose step fits, confirmed by one real forward + backward.

The trainer and the planner (`gpt2lab train --dry-run`) both use these; the planner imports them, never the reverse.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from gpt2lab.errors import GPT2LabError
from gpt2lab.model.config import GPTConfig
from gpt2lab.runtime import memory
from gpt2lab.runtime.device import keep_freed_memory
from gpt2lab.runtime.hardware import DeviceSpec
from gpt2lab.train.config import AUTO
from gpt2lab.train.parallel import ParallelModel
from gpt2lab.train.step import TrainStep, repeat

CUDA_CONTEXT_BYTES = 600 * 2**20  # a planned GPU's CUDA context and library workspaces (~0.5-0.6 GiB with torch)
GPU_USABLE = 0.9  # of a GPU's memory: the rest is headroom for the caching allocator's fragmentation
CPU_USABLE = 0.8  # of the memory available on a CPU, for "auto": the estimate is good to ~20 %, not to the byte


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


# --------------------------------------------------------------------------------------------- memory


@dataclass
class ParameterCounts:
    total: int  # the tied wte/lm_head counted once
    cast: int  # in the matmul layers, which autocast copies (the Conv1D layers and lm_head = wte)
    muon: int  # trained by Muon under optim.name = muon (0 under adamw)
    averaged: int = 0  # with a moving average (optim.ema: all of them)
    step_copied: int = 0  # copied during the optimizer step (optim.adamw_cautious_wd: AdamW's decayed tensors)


def parameter_counts(arch: GPTConfig, optimizer: str, averaged: bool = False, optim=None) -> ParameterCounts:
    """`optim` (an OptimSection, optional): for what its options add (CautiousAdamW's copies)."""
    from gpt2lab.model.gpt import GPT, Conv1D
    from gpt2lab.train.optim import cautious_copy_parameters, muon_parameter_names

    with torch.device("meta"):  # shapes only: no memory, no time
        model = GPT(arch, init_weights=False)
    cast = {id(p): p.numel() for m in model.modules() if isinstance(m, (Conv1D, torch.nn.Linear))
            for p in m.parameters()}
    named = dict(model.named_parameters())
    muon = sum(named[n].numel() for n in muon_parameter_names(model)) if optimizer == "muon" else 0
    total = model.num_parameters()
    copied = cautious_copy_parameters(model, optim) if optim is not None else 0
    return ParameterCounts(total, sum(cast.values()), muon, total if averaged else 0, copied)


@dataclass
class StepMemory:
    """Everything but the batch that one process's step memory depends on."""

    arch: GPTConfig
    params: ParameterCounts
    device: DeviceSpec
    world_size: int
    runtime: int  # the process's own memory (runtime_bytes)
    strategy: str = "ddp"  # ddp | fsdp (parallel.py)
    activation_checkpointing: bool = False

    def estimate(self, batch_size: int, seq_len: int, grad_accum: int) -> memory.TrainingMemory:
        amp = self.device.amp_dtype
        return memory.estimate_training(
            self.arch, batch_size, seq_len, params=self.params.total, cast_params=self.params.cast,
            muon_params=self.params.muon, averaged_params=self.params.averaged, step_copies=self.params.step_copied,
            amp_bytes=amp.itemsize if amp else None, grad_accum=grad_accum, world_size=self.world_size,
            runtime=self.runtime, cpu_heap=self.device.type == "cpu",
            sharded=self.strategy == "fsdp", checkpointed=self.activation_checkpointing,
            # FSDP on a GPU gathers the weights in the autocast dtype (parallel.shard's mixed-precision policy)
            low_precision_params=self.strategy == "fsdp" and self.device.type == "cuda" and amp is not None)

    def with_strategy(self, strategy: str) -> "StepMemory":
        return dataclasses.replace(self, strategy=strategy)

    def budget(self, local_processes: int = 1) -> int | None:
        """Bytes one process may plan to use for `auto`: a fraction of its device's (or its share of the CPU's)."""
        if self.device.memory_bytes is None:
            return None
        usable = GPU_USABLE if self.device.type == "cuda" else CPU_USABLE
        return int(self.device.memory_bytes * usable / local_processes)


def runtime_bytes(device: DeviceSpec, optimizer: str) -> int:
    """The process's own memory, beyond the model's tensors. On this machine's CPU: this process's resident memory
    after two training steps of a tiny model in the same precision and optimizer (which load and touch the same
    kernels a real step does); on a GPU: the CUDA context."""
    if device.type == "cuda":
        return CUDA_CONTEXT_BYTES if device.planned else memory.cuda_context_bytes(torch.cuda.current_device())
    if device.type != "cpu":
        return 0
    from gpt2lab.model.gpt import GPT
    from gpt2lab.train.config import OptimSection
    from gpt2lab.train.optim import make_optimizer

    keep_freed_memory()  # as the trainer does: it decides what stays resident
    cpu = torch.device("cpu")
    with torch.random.fork_rng(devices=[]):  # the trainer's random state is not this tiny model's business
        tiny = GPT(GPTConfig(block_size=8, vocab_size=64, n_layer=1, n_head=1, n_embd=32))
    step = TrainStep(ParallelModel(tiny), make_optimizer(tiny, OptimSection(name=optimizer), cpu), device=cpu,
                     amp_dtype=device.amp_dtype)
    x = torch.arange(16).view(2, 8) % 64
    for i in range(2):
        step(i, repeat((x, x)))
    return memory.resident_bytes()


# --------------------------------------------------------------------------------------------- "auto"


def choose_batch_size(step_memory: StepMemory, total_batch_tokens: int, seq_len: int, local_processes: int = 1) -> int:
    """The largest micro-batch whose estimated step fits the device's budget (all of them when memory is unknown)."""
    choices = batch_size_choices(total_batch_tokens, seq_len, step_memory.world_size)
    budget = step_memory.budget(local_processes)
    for b in choices:
        accum = total_batch_tokens // (b * seq_len * step_memory.world_size)
        if budget is None or step_memory.estimate(b, seq_len, accum).total <= budget:
            return b
    smallest = step_memory.estimate(1, seq_len, choices[0])
    raise GPT2LabError(
        f"even data.batch_size 1 would need ~{memory.format_bytes(smallest.total)} per process for one step, more "
        f"than the {memory.format_bytes(budget)} {step_memory.device.name} offers it; lower data.seq_len, use a "
        f"smaller model, or train on a device with more memory")


def confirm_batch_size(model: ParallelModel, choices: list[int], seq_len: int, device: torch.device, amp_dtype,
                       hold_back: int, log=print) -> int:
    """Run one real forward + backward at each size, largest first, until one runs: on a GPU, an out-of-memory
    error moves on to the next smaller size. `hold_back` bytes (the optimizer state the first step will allocate)
    are held while it runs, so the trial needs what a real step needs. Uses no global RNG; leaves no gradients."""
    for i, batch_size in enumerate(choices):
        try:
            _trial_step(model, batch_size, seq_len, device, amp_dtype, hold_back)
        except torch.OutOfMemoryError:
            pass  # handled below: until the except block ends, its traceback holds the failed attempt's tensors
        else:
            if device.type == "cuda":  # the log's peak_mem_mb is then the training's own
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            return batch_size
        model.raw.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if i + 1 == len(choices):
            raise GPT2LabError(f"data.batch_size auto: even 1 sequence of {seq_len} tokens runs out of memory on "
                               f"{device}; lower data.seq_len or use a smaller model")
        log(f"data.batch_size auto: {batch_size} ran out of memory on {device}; trying {choices[i + 1]}")
    raise AssertionError("unreachable: the last choice either runs or raises")


def _trial_step(model: ParallelModel, batch_size: int, seq_len: int, device, amp_dtype, hold_back: int) -> None:
    held = torch.empty(hold_back, dtype=torch.uint8, device=device) if device.type == "cuda" else None  # noqa: F841
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, model.raw.config.vocab_size, (batch_size, seq_len + 1), generator=generator).to(device)
    TrainStep(model, None, device=device, amp_dtype=amp_dtype).forward_backward(repeat((x[:, :-1], x[:, 1:])))
    model.raw.zero_grad(set_to_none=True)


def step_memory_of(model, config, device: torch.device, amp_dtype, ctx, measure_runtime: bool = True) -> StepMemory:
    """The StepMemory of a run whose model is built already (on a CPU, in this process's memory: what the estimate's
    runtime then leaves out). measure_runtime=False: the process's own memory is not measured (counted as 0)."""
    from gpt2lab.runtime.hardware import device_spec

    spec = device_spec(device, amp_dtype)
    params = parameter_counts(model.config, config.optim.name, averaged=config.optim.ema > 0, optim=config.optim)
    runtime = 0
    if measure_runtime:
        runtime = runtime_bytes(spec, config.optim.name) - (4 * params.total if device.type == "cpu" else 0)
    return StepMemory(model.config, params, spec, ctx.world_size, runtime,
                      activation_checkpointing=config.runtime.activation_checkpointing)


def choose_strategy(step_memory: StepMemory, data, local_processes: int = 1) -> tuple[str, str]:
    """parallel.strategy = "auto": (strategy, why). DDP when a whole copy of the model's states and the step fits
    each device (at data.batch_size, or, with "auto", at some micro-batch), else FSDP. One process has nothing to
    shard: DDP (that is, the plain model)."""
    if step_memory.world_size == 1:
        return "ddp", "one process: nothing to shard"
    budget = step_memory.budget(local_processes)
    where = f"{memory.format_bytes(budget)} usable per process on {step_memory.device.name}"
    if data.batch_size == AUTO:  # each strategy at the largest micro-batch it fits, if any
        fitting = {}
        for strategy in ("ddp", "fsdp"):
            memory_of = step_memory.with_strategy(strategy)
            try:
                b = choose_batch_size(memory_of, data.total_batch_tokens, data.seq_len, local_processes)
            except GPT2LabError:
                continue
            accum = data.total_batch_tokens // (b * data.seq_len * step_memory.world_size)
            fitting[strategy] = f"~{memory.format_bytes(memory_of.estimate(b, data.seq_len, accum).total)} at " \
                                f"micro-batch {b}"
        described = ", ".join(f"{s.upper()} {fitting.get(s, 'does not fit')}" for s in ("ddp", "fsdp"))
        return ("ddp" if "ddp" in fitting else "fsdp"), f"{described}; {where}"
    accum = grad_accum_steps(data.total_batch_tokens, data.batch_size, data.seq_len, step_memory.world_size)
    sizes = {s: step_memory.with_strategy(s).estimate(data.batch_size, data.seq_len, accum).total
             for s in ("ddp", "fsdp")}
    strategy = "ddp" if budget is None or sizes["ddp"] <= budget else "fsdp"
    return strategy, (f"~{memory.format_bytes(sizes['ddp'])} per process with DDP, "
                      f"~{memory.format_bytes(sizes['fsdp'])} with FSDP; {where}")


def auto_batch_size(model: ParallelModel, data, step_memory: StepMemory, device: torch.device, amp_dtype, ctx,
                    log=print) -> int:
    """data.batch_size = "auto" for a model ready to train on `device` (sharded or DDP-wrapped already): the largest
    micro-batch whose estimated step fits, run once for real (on a GPU, smaller ones after an out-of-memory error),
    the same on every rank."""
    from gpt2lab.runtime import distributed

    world = ctx.world_size
    local = ctx.local_world_size if device.type == "cpu" else 1
    chosen = choose_batch_size(step_memory, data.total_batch_tokens, data.seq_len, local)
    choices = [b for b in batch_size_choices(data.total_batch_tokens, data.seq_len, world) if b <= chosen]
    held = step_memory.estimate(chosen, data.seq_len, 1)
    hold_back = held.optimizer + held.ddp_buckets  # what the first real step allocates beyond the trial's
    chosen = confirm_batch_size(model, choices, data.seq_len, device, amp_dtype, hold_back, log=log)
    chosen = min(distributed.all_gather_object(chosen))
    accum = data.total_batch_tokens // (chosen * data.seq_len * world)
    estimate = step_memory.estimate(chosen, data.seq_len, accum).total
    log(f"data.batch_size auto: {chosen} ({accum} micro-step(s) per step of {data.total_batch_tokens:,} tokens; "
        f"~{memory.format_bytes(estimate)} per process estimated, {memory.format_bytes(step_memory.device.memory_bytes)}"
        f" {step_memory.device.name} has; ran a forward + backward)")
    return chosen


def with_batch_size(config, batch_size: int):
    """The config with data.batch_size set (the resolved "auto")."""
    return dataclasses.replace(config, data=dataclasses.replace(config.data, batch_size=batch_size))
