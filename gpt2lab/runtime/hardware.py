"""What a device offers a training process: its name, its memory and its peak FLOP/s, for this machine's device
or, from published specs, for a GPU the user does not have (`gpt2lab train --dry-run --plan-device h100`)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch

from gpt2lab.errors import BadValue
from gpt2lab.runtime import memory, perf

MIB = 2**20


@dataclass(frozen=True)
class GPUSpec:
    name: str
    bf16_flops: float  # published dense bf16 tensor-core peak (no sparsity), FLOP/s
    memory_bytes: int  # as nvidia-smi reports it
    pattern: str  # how torch.cuda.get_device_name names it ("NVIDIA H100 80GB HBM3"); the first match wins


# GPUs people train GPT-2 on, by the short name `--plan-device` takes; a CUDA device not in the table reports no
# MFU. Order matters: the PCIe H100 and the 40 GB A100 before their namesakes.
GPUS = {
    "h100-pcie": GPUSpec("NVIDIA H100 PCIe 80GB", 756e12, 81559 * MIB, r"H100.*PCIe"),
    "h100": GPUSpec("NVIDIA H100 SXM 80GB", 989e12, 81559 * MIB, r"H100"),
    "h200": GPUSpec("NVIDIA H200 141GB", 989e12, 143771 * MIB, r"H200"),
    "a100-40gb": GPUSpec("NVIDIA A100 40GB", 312e12, 40960 * MIB, r"A100.*40GB"),
    "a100": GPUSpec("NVIDIA A100 80GB", 312e12, 81920 * MIB, r"A100"),
    "l40s": GPUSpec("NVIDIA L40S 48GB", 362e12, 46068 * MIB, r"L40S"),
    "a10": GPUSpec("NVIDIA A10 24GB", 125e12, 23028 * MIB, r"\bA10\b"),
    "l4": GPUSpec("NVIDIA L4 24GB", 121e12, 23034 * MIB, r"\bL4\b"),
    "rtx4090": GPUSpec("NVIDIA GeForce RTX 4090 24GB", 165e12, 24564 * MIB, r"RTX 4090"),
    "rtx3090": GPUSpec("NVIDIA GeForce RTX 3090 24GB", 71e12, 24576 * MIB, r"RTX 3090"),
}


def gpu_spec(device_name: str) -> GPUSpec | None:
    """The table's entry for a CUDA device's name, or None."""
    return next((spec for spec in GPUS.values() if re.search(spec.pattern, device_name)), None)


def peak_flops(device: torch.device) -> float | None:
    """The published bf16 peak of `device` (FLOP/s), or None for a CPU or a GPU not in the table."""
    if device.type != "cuda":
        return None
    spec = gpu_spec(torch.cuda.get_device_name(device))
    return spec.bf16_flops if spec else None


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


def device_spec(device: torch.device, amp_dtype: torch.dtype | None, measure_peak: bool = False) -> DeviceSpec:
    """`device`'s name and memory, and its peak: published for a GPU; for a CPU measured (a one-second matmul in
    the training precision, with the threads torch uses) when `measure_peak`, else unknown."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        spec = gpu_spec(name)
        peak = spec.bf16_flops if spec and amp_dtype is not None else None
        total = torch.cuda.get_device_properties(device).total_memory
        return DeviceSpec("cuda", name, total, peak, "published bf16 dense" if peak else "not in gpt2lab's table",
                          amp_dtype)
    if device.type == "cpu":
        spec = DeviceSpec("cpu", cpu_name(), cpu_memory_for_one_process(), None, "not measured", amp_dtype)
        if measure_peak:
            dtype = amp_dtype or torch.float32
            spec.peak_flops = perf.measure_matmul_peak(device, dtype)
            spec.peak_source = f"measured: {dtype} matmul, 1 s, {torch.get_num_threads()} threads".replace("torch.", "")
        return spec
    return DeviceSpec(device.type, device.type, None, None, "unknown", amp_dtype)


def planned_device(name: str, precision: str = "auto") -> DeviceSpec:
    """A GPU from the table above (h100, a100, rtx4090, ...), for planning without one."""
    key = name.lower().replace(" ", "")
    if key not in GPUS:
        raise BadValue("plan_device", f"{name!r} is not a GPU gpt2lab knows; choose one of {', '.join(GPUS)} (or "
                                      f"leave it out to plan for this machine)")
    spec = GPUS[key]
    amp = {"auto": torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]
    return DeviceSpec("cuda", spec.name, spec.memory_bytes, spec.bf16_flops if amp else None,
                      "published bf16 dense" if amp else "fp32: not in gpt2lab's table", amp, planned=True)


def cpu_memory_for_one_process() -> int | None:
    """What a training process could hold here: the memory available now plus what this process holds (a real
    run would start from as much as this one holds: the interpreter and torch)."""
    available = memory.available_bytes("cpu")
    return None if available is None else available + memory.resident_bytes()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        model = platform.processor() or "CPU"
    return f"{model}, {os.cpu_count()} cores"
