"""Refuse, up front and in one line, work whose memory grows with a number the user typed and would not fit.

A typo such as `--batch-size 100000` should not take the machine down: on a CPU the kernel's OOM killer may pick
another process first, and swapping can freeze the whole machine before it acts. So the commands estimate the
memory of their largest step from the batch shape (`forward_bytes`) and compare it with what is available now
(`check_fits`) before they start.

The estimate is deliberately rough and errs on the side of allowing: it counts only the big terms that grow with
the batch (the vocabulary logits, the activations, a KV cache) and leaves out the weights, the optimizer state,
the allocator's slack and the attention scores, so the real peak is higher (measured on a CPU for gpt2-shaped
models: 1.2-1.4x the estimate for a training step or an evaluation batch, more for sampling's small batches,
whose fixed costs dominate). It exists to catch sizes that are wildly off, not to fill memory to the last byte;
when the available memory cannot be known (MPS, a system without /proc/meminfo) nothing is refused.
"""

from __future__ import annotations

import os

import torch

from gpt2lab.errors import GPT2LabError

GIB = 2**30
MEMINFO = "/proc/meminfo"


class MemoryLimitError(GPT2LabError, MemoryError):
    """The work asked for would need more memory than the machine has available."""


def forward_bytes(config, rows: int, tokens: int, *, scored: int | None = None, training: bool = False,
                  cached: int = 0, bytes_per_value: int = 4) -> int:
    """Rough bytes one forward pass (and, when training, its backward pass) needs on top of the weights.

    rows x tokens: the input batch; scored: positions per row projected onto the vocabulary (default all of
    them; sampling needs 1); cached: positions per row of a KV cache (sampling); bytes_per_value: 4 for float32,
    2 under bfloat16/float16.
    """
    scored = tokens if scored is None else scored
    C, L, V = config.n_embd, config.n_layer, config.vocab_size
    # float32 logits, then the loss's log-softmax of them (and, training, their gradient): measured ~1.9x the
    # logits' size for a forward pass, ~2.7x with the backward pass; counted as 1.5x and 2x
    logits = rows * scored * V * 4 * (2 if training else 1.5)
    if training:  # every block keeps ~16 values per token and channel for the backward pass
        activations = L * rows * tokens * C * 16 * bytes_per_value
    else:  # blocks run one after another: one MLP's 4C-wide hidden state (in and out of the GELU) at a time
        activations = rows * tokens * 4 * C * 2 * bytes_per_value
    kv_cache = 2 * L * rows * cached * C * bytes_per_value
    return int(logits + activations + kv_cache)


def token_list_bytes(characters: int) -> int:
    """Rough bytes of Python token lists for text of this many characters (what tiktoken's encode returns):
    ~1 token per 4 characters of English, each an int object (28 bytes) plus its slot in the list (8)."""
    return characters // 4 * 36


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


def check_fits(what: str, needed: int, device, step: str = "for one forward pass") -> None:
    """Raise a one-line MemoryLimitError when `needed` bytes exceed the memory available on `device`.

    what: the user's number as they typed it, e.g. "--batch-size 100000"; step: what needs the memory.
    """
    available = available_bytes(device)
    if available is not None and needed > available:
        where = "" if torch.device(device).type == "cpu" else f" on {device}"
        raise MemoryLimitError(
            f"{what} would need ~{_size(needed)} {step}, more than the {_size(available)} available{where}; lower it"
        )


def _size(n: int) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2**20:.0f} MiB"
