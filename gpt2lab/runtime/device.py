"""Choosing where and in which precision to run: one place, shared by every command.

A precision is named two ways: the training config's short names (`runtime.precision`: auto, fp32, bf16, fp16)
and the command line's dtype names (`--dtype`: float32, bfloat16, float16). `autocast_dtype` turns either into
the dtype the forward pass autocasts to, and `autocast` is the one context that applies it.
"""

from __future__ import annotations

import contextlib

import torch

from gpt2lab.errors import GPT2LabError

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SHORT_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # the training config's spelling


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then the CPU. `cuda:1` style indices are accepted."""
    kind = name.split(":")[0]
    if kind not in DEVICES:
        raise GPT2LabError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise GPT2LabError("device 'cuda' is not available on this machine (no CUDA GPU or a CPU-only torch); use --device cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise GPT2LabError("device 'mps' is not available on this machine (Apple silicon only); use --device cpu")
    return torch.device(name)


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise GPT2LabError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 natively (faster than float32), not by emulation (slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()  # AVX512-BF16 or AMX
    return False


def native_dtypes(device: torch.device) -> list[str]:
    """The dtypes worth measuring on `device`: float32, and bfloat16 where it is native."""
    return ["float32", "bfloat16"] if native_bf16(device) else ["float32"]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype to autocast the forward pass to; None means plain float32 (weights stay float32 either way).

    `precision` is auto, a short name (fp32, bf16, fp16) or a dtype name (float32, ...). `auto` takes bf16 where
    the device computes it natively; otherwise fp16 on CUDA (old GPUs: still far faster than fp32) and fp32
    elsewhere (emulated bf16 is slower than fp32).
    """
    if precision == "auto":
        if native_bf16(device):
            return torch.bfloat16
        return torch.float16 if device.type == "cuda" else None
    dtype = resolve_dtype(SHORT_NAMES.get(precision, precision))
    return None if dtype == torch.float32 else dtype


def decoding_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype to load a model in for sampling: `name` (float32, bfloat16, float16), or for `auto` whichever
    decodes faster on `device`. Decoding reads every weight once per token, so half the bytes is faster wherever
    the device has a bf16 product that streams them at full speed: CUDA GPUs with bf16, and CPUs that compute bf16
    natively through oneDNN's packed product (gpt2lab.model.cpu_decode; ~1.4-1.7x float32 measured on an AVX512-BF16
    CPU); float32 elsewhere (emulated bf16 is far slower). A fixed rule, not a timing: the same seed gives the
    same text every run on the same machine."""
    if name != "auto":
        return resolve_dtype(name)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        from gpt2lab.model.cpu_decode import packing_available

        return torch.bfloat16 if packing_available() else torch.float32
    return torch.float32


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision for a forward pass in `dtype` (None or float32: full precision, no autocast)."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def keep_freed_memory() -> None:
    """Let this process reuse the large blocks it frees instead of handing them back to the OS (Linux/glibc).

    Why: glibc serves every allocation over 32 MB (logits, activations, gradients of a training step) with a
    fresh mmap and unmaps it on free, so each step pays a page fault for every 4 KB page it touches again: on a
    CPU that measured ~200k faults and ~45% of a small model's training step. Turning mmap allocation off and
    raising the trim threshold keeps the memory in the heap for the next step (the same effect as the
    MALLOC_MMAP_MAX_=0 environment setting, or preloading jemalloc/tcmalloc). Peak memory is unchanged; memory
    freed at the peak is kept for reuse rather than returned. A no-op where glibc's mallopt is unavailable.
    """
    _mallopt({M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1})


def return_freed_memory() -> None:
    """The opposite choice, for FSDP on a CPU: every block over 1 MiB is its own mmap, handed back when freed.

    Why: a sharded model allocates and frees each block's whole weights and gradients at every step; kept in a
    fragmenting heap, those add up to more resident memory than the shards save (measured: a 2-process GPT-2 124M
    step peaked at 3.8 GB with the heap kept, 1.9 GB with this, against 3.1 GB for DDP). The page faults cost
    less than the memory."""
    _mallopt({M_MMAP_MAX: 65536, M_MMAP_THRESHOLD: 1 << 20, M_TRIM_THRESHOLD: 128 * 1024}, trim=True)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # from glibc's malloc.h


def _mallopt(settings: dict, trim: bool = False) -> None:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # macOS, Windows, musl: nothing to do
        return
    for option, value in settings.items():
        mallopt(option, ctypes.c_int(value))
    if trim and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)  # what the heap holds free now goes back too
