"""Memory: the one estimator of what a step needs, the up-front refusal of sizes that cannot fit, measured peaks.

1. `estimate_training`: what one training process holds at the peak of a step, term by term. `gpt2lab train
   --dry-run`, `data.batch_size = "auto"` and the trainer's CPU refusal all use it (through
   `gpt2lab.train.batch.StepMemory`), and tests/e2e/test_memory_estimate.py holds it against measured peaks.
2. `inference_bytes` + `check_fits`: refuse, up front and in one line, an inference batch (sampling, evaluation,
   serving) whose memory grows with a number the user typed and would not fit.
3. `peak_bytes`: the measured peak (a CPU's peak resident set size; a GPU's allocator peak plus the CUDA context),
   which training logs as `peak_mem_mb`.

A typo such as `--batch-size 100000` should not take the machine down: on a CPU the kernel's OOM killer may pick
another process first, and swapping can freeze the whole machine before it acts. `inference_bytes` is deliberately
rough and errs on the side of allowing: it counts only the big terms that grow with the batch (the vocabulary
logits, the activations of one block, a KV cache), not the weights or the allocator's slack. It exists to catch
sizes that are wildly off; where the available memory cannot be known (MPS, no /proc/meminfo) nothing is refused.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass

import torch

from gpt2lab.errors import BadValue

GIB = 2**30
MEMINFO = "/proc/meminfo"


class MemoryLimitError(BadValue, MemoryError):
    """The work asked for would need more memory than the machine has available."""


def format_bytes(n: int | None) -> str:
    """Sizes as every gpt2lab message writes them: MiB below 1 GiB, GiB above (two decimals below 10 GiB)."""
    if n is None:
        return "unknown"
    if n < GIB:
        return f"{n / 2**20:.0f} MiB"
    return f"{n / GIB:.2f} GiB" if n < 10 * GIB else f"{n / GIB:.1f} GiB"


# --------------------------------------------------------------------------------------------- training


@dataclass
class TrainingMemory:
    """What one process holds at the peak of a training step, in bytes, by what holds it (see `estimate_training`)."""

    runtime: int  # the process itself: Python + torch's code and buffers (CPU), or the CUDA context (GPU)
    weights: int  # float32 master weights (under FSDP this process's shard)
    gradients: int  # float32, those that exist at the peak (FSDP: the shard; accumulating: the whole, unsharded)
    optimizer: int  # AdamW: two moments per parameter; Muon: one momentum buffer per matrix (+ its updates);
    # with optim.ema, the weights' float32 moving average
    autocast_weights: int  # bf16/fp16 copies of the matmul weights, kept for the backward pass
    activations: int  # what the blocks save for the backward pass, for B x T tokens
    logits: int  # B x T x vocab float32 buffers: log-probabilities and their gradients
    ddp_buckets: int  # DDP's gradient buckets (torchrun): a second copy of the gradients
    gathered_weights: int  # FSDP: the whole weights of the blocks computing (two, with prefetch) and of the root
    reduce_buffers: int  # FSDP: one block's gradients on their way to the reduce-scatter
    allocator: int  # freed memory a CPU's heap keeps but cannot reuse (see CPU_HEAP_SLACK)

    @property
    def total(self) -> int:
        return sum(dataclasses.astuple(self))


def optimizer_state_bytes(params: int, muon_params: int = 0, averaged_params: int = 0) -> int:
    """The optimizer's state, float32: AdamW's two moments per parameter, Muon's one momentum buffer per element of
    its matrices, and the moving average of the weights that have one (optim.ema). What a step holds and what a
    checkpoint's training_state.pt stores."""
    return 8 * (params - muon_params) + 4 * muon_params + 4 * averaged_params


# On a CPU the trainer keeps freed memory in glibc's heap (device.keep_freed_memory), and that heap fragments: a
# step's large buffers often find no hole big enough but above what the previous step used, so the resident size
# grows over the first ~10 steps, by whole loss buffers at a time. The allowance is this fraction of what a step
# allocates and frees; with accumulation every micro-step is one more chance to fragment (accumulation_churn).
CPU_HEAP_SLACK = 0.8


def accumulation_churn(grad_accum: int) -> float:
    """Extra sets of activations and loss buffers the heap allowance counts for this many micro-steps: none for 1,
    one for 2, 1.5 from 3 on."""
    return min(grad_accum - 1, 1.5)


def block_and_root_params(config) -> tuple[int, int]:
    """Parameters of one transformer block (12C^2 + 13C: c_attn, c_proj, c_fc, mlp c_proj, two LayerNorms) and of
    the rest, FSDP's root unit (the tied embedding/head, the position embeddings, the final LayerNorm)."""
    C = config.n_embd
    return 12 * C * C + 13 * C, (config.vocab_size + config.block_size + 2) * C


def estimate_training(config, batch_size: int, seq_len: int, *, params: int, cast_params: int, muon_params: int = 0,
                      averaged_params: int = 0, step_copies: int = 0, amp_bytes: int | None = None, grad_accum: int = 1, world_size: int = 1,
                      runtime: int = 0, cpu_heap: bool = False, sharded: bool = False,
                      low_precision_params: bool = False, checkpointed: bool = False) -> TrainingMemory:
    """The peak memory of one process's training step of a GPT-2 `config` on B x T tokens, term by term.

    params: all parameters; cast_params: those autocast copies (the Conv1D layers and the tied lm_head);
    muon_params: those Muon trains (the rest has AdamW); averaged_params: those with a moving average (optim.ema);
    step_copies: those the optimizer step copies while it runs (optim.adamw_cautious_wd);
    amp_bytes: 2 under bf16/fp16 autocast, None in fp32;
    runtime: the process's own memory; cpu_heap: add the CPU heap's allowance (CPU_HEAP_SLACK); sharded: FSDP over
    world_size processes; low_precision_params: FSDP gathers weights in the amp dtype (its GPU mixed-precision
    policy: no autocast copies then); checkpointed: activation checkpointing per block.

    The peak is where the backward pass starts: every block's activations are still held when the loss's
    backward makes the gradient of the B x T x vocab log-probabilities. Counted per token and layer from what
    autograd saves (model/gpt.py): fp32: the block input, ln_1 out, qkv (3C), attention out, its contiguous copy,
    the residual after attention, ln_2 out, the MLP's 4C hidden before and after GELU: 17C floats. Under autocast
    the matmul inputs and outputs are 2-byte copies while LayerNorm and the residual stream stay float32: 38C
    bytes. With activation checkpointing a block keeps only its float32 input (4C bytes) and one block at a time
    holds the rest again while its backward runs. The loss: log_softmax's float32 output, the gradient nll_loss
    hands back and log_softmax's own, 3 x 4 bytes per token and vocabulary entry. Gradients are created as the
    backward pass frees activations, so they count at that peak only when accumulation kept them from an earlier
    micro-step (under FSDP whole and unsharded: gradients are reduced on the last micro-step only); the other
    candidate for the peak is the optimizer step, with every gradient (and, for Muon, every update) held at once.
    """
    C, L, V, H = config.n_embd, config.n_layer, config.vocab_size, config.n_head
    tokens = batch_size * seq_len
    per_layer = (38 * C if amp_bytes else 17 * 4 * C) + 4 * H  # bytes per token; + the flash kernels' log-sum-exp
    final = (4 + 2) * C if amp_bytes else 2 * 4 * C  # ln_f's float32 input, and its output as lm_head sees it
    layers = L * 4 * C + per_layer if checkpointed else L * per_layer
    activations = tokens * (layers + final)
    logits = tokens * V * 3 * 4
    shards = world_size if sharded else 1
    block, root = block_and_root_params(config)
    gathered = 0
    if sharded:  # two blocks' weights (the one computing, the next prefetched) and the root's, whole
        gathered = (2 * block + root) * (amp_bytes if low_precision_params else 4)
    autocast_weights = 0 if low_precision_params else (amp_bytes or 0) * cast_params
    weights = 4 * params // shards
    step_gradients = 4 * params // shards
    held = 0
    if grad_accum > 1:  # kept from one micro-step to the next; FSDP keeps them whole until the last
        held = params * (amp_bytes if low_precision_params else 4) if sharded else step_gradients
    optimizer = optimizer_state_bytes(params, muon_params, averaged_params) // shards
    muon_updates = 4 * muon_params // shards * (2 if sharded else 1)  # FSDP: the owner's whole matrices too
    backward = autocast_weights + activations + logits + held
    step_held = muon_updates + 4 * step_copies // shards  # alive during the optimizer step only
    step = step_gradients + step_held
    at_backward = backward >= step
    reduce_buffers = 4 * block * 2 if sharded else 0
    churn = activations + logits + 4 * params // shards + gathered  # what a step allocates and frees
    churn += int(accumulation_churn(grad_accum) * (activations + logits))
    return TrainingMemory(
        runtime=runtime, weights=weights, gradients=held if at_backward else step_gradients,
        optimizer=optimizer + (0 if at_backward else step_held),
        autocast_weights=autocast_weights if at_backward else 0,
        activations=activations if at_backward else 0, logits=logits if at_backward else 0,
        ddp_buckets=4 * params if world_size > 1 and not sharded else 0,
        gathered_weights=gathered, reduce_buffers=reduce_buffers,
        allocator=int(CPU_HEAP_SLACK * churn) if cpu_heap else 0)


# --------------------------------------------------------------------------------------------- the guard


def inference_bytes(config, rows: int, tokens: int, *, scored: int | None = None, cached: int = 0,
                    bytes_per_value: int = 4) -> int:
    """Rough bytes one forward pass without gradients needs on top of the weights.

    rows x tokens: the input batch; scored: positions per row projected onto the vocabulary (default all of
    them; sampling needs 1); cached: positions per row of a KV cache; bytes_per_value: 4 for float32, 2 under
    bfloat16/float16.
    """
    scored = tokens if scored is None else scored
    C, L, V = config.n_embd, config.n_layer, config.vocab_size
    logits = rows * scored * V * 4 * 1.5  # float32 logits, then the loss's log-softmax of them
    activations = rows * tokens * 4 * C * 2 * bytes_per_value  # one MLP's 4C hidden state, in and out of GELU
    kv_cache = 2 * L * rows * cached * C * bytes_per_value
    return int(logits + activations + kv_cache)


def token_list_bytes(characters: int) -> int:
    """Rough bytes of Python token lists for text of this many characters (what tiktoken's encode returns):
    ~1 token per 4 characters of English, each an int object (28 bytes) plus its slot in the list (8)."""
    return characters // 4 * 36


def check_fits(param: str, value, needed: int, device, step: str = "for one forward pass") -> None:
    """Raise a one-line MemoryLimitError naming `param` (as the caller knows it: `batch_size`, `data.batch_size`)
    and its `value` when `needed` bytes exceed the memory available on `device`."""
    available = available_bytes(device)
    if available is not None and needed > available:
        where = "" if torch.device(device).type == "cpu" else f" on {device}"
        raise MemoryLimitError(param, f"{value} would need ~{format_bytes(needed)} {step}, more than the "
                                      f"{format_bytes(available)} available{where}; lower it")


def available_bytes(device) -> int | None:
    """Memory that can be allocated now on `device`: MemAvailable on a Linux CPU, free memory on a CUDA GPU
    (plus what torch holds cached there); None when it cannot be known."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        return None
    try:  # MemAvailable counts the page cache the kernel can drop, which MemFree (sysconf's figure) does not
        with open(MEMINFO) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # not a POSIX system that knows
        return None


# --------------------------------------------------------------------------------------------- measured


def peak_bytes(device) -> int | None:
    """The measured peak so far, what a training step's estimate is held against: on a CPU, this process's peak
    resident set size (what `/usr/bin/time -v` reports); on a CUDA GPU, the most memory torch's allocator has
    handed out plus what the CUDA context and libraries hold outside it (`cuda_context_bytes`). None where
    neither can be read (MPS, Windows).

    On Linux the CPU's number is VmHWM, not getrusage's ru_maxrss: ru_maxrss also counts the resident memory of the
    process that started this one (the kernel keeps the larger of the two across exec)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) + cuda_context_bytes(device)
    if device.type != "cpu":
        return None
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS counts bytes, the BSDs kilobytes


def reset_cpu_peak() -> None:
    """Start VmHWM again from the resident size now (Linux), so the next `peak_bytes` is the peak from here on."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def resident_bytes() -> int:
    """This process's resident memory now (Linux); elsewhere the peak so far, which is close to it after a step."""
    now = _status_bytes("VmRSS")
    return now if now is not None else (peak_bytes("cpu") or 0)


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(f"{field}:"))
    except (OSError, StopIteration, ValueError, IndexError):  # not Linux
        return None


_context_bytes: dict[int, int] = {}


def cuda_context_bytes(device) -> int:
    """Device memory in use but not by torch's allocator: the CUDA context, cuBLAS/cuDNN/NCCL workspaces. Taken
    the first time it is asked for (the earlier, the fewer other allocations it can mistake for the context)."""
    index = torch.device(device).index or 0
    if index not in _context_bytes:
        free, total = torch.cuda.mem_get_info(index)
        _context_bytes[index] = max(0, total - free - torch.cuda.memory_reserved(index))
    return _context_bytes[index]
