"""What every `gpt2lab bench` mode shares: the result rows, the alternating timed runs with their peak memory,
the environment, the transformers twin of a model, and the report (ratios, a table, JSON)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
from dataclasses import asdict, dataclass, field

import torch

from gpt2lab.errors import GPT2LabError
from gpt2lab.model.config import GPTConfig
from gpt2lab.model.gpt import GPT
from gpt2lab.runtime import memory
from gpt2lab.runtime.device import resolve_dtype
from gpt2lab.runtime.perf import time_calls

BENCH_CONFIGS = {
    "gpt2": GPTConfig.from_preset("gpt2"),
    "tiny": GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=128, vocab_size=50257),
}


@dataclass
class Row:
    impl: str
    dtype: str
    batch_size: int
    tokens_per_s: float
    ms_per_iter: float
    peak_mem_mb: float | None = None
    extra: dict = field(default_factory=dict)



def measure(fns: dict, device, iters: int = 1, warmup: int = 1, repeats: int = 3,
            reserved: dict | None = None) -> tuple[dict, dict]:
    """Warm each fn up on its own (so each gets its own peak memory), then time `repeats` rounds of `iters`
    calls, alternating between fns so that load from elsewhere on the machine hits them alike.
    Returns ({name: [seconds per call]}, {name: peak MB or None}); `reserved` gets {name: the CUDA allocator's
    peak reserved MB during the warm-up, or None off CUDA}."""
    peaks = {}
    for name, fn in fns.items():
        peaks[name] = peak_mb_of(fn, device, warmup)
        if reserved is not None:
            reserved[name] = torch.cuda.max_memory_reserved() / 2**20 if torch.device(device).type == "cuda" else None
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name] += time_calls(fn, device, iters)
    return times, peaks


def peak_mb_of(fn, device, calls: int) -> float | None:
    """Peak memory of `calls` calls of fn, in MB: CUDA allocator stats on GPUs; on Linux the process's peak RSS,
    restarted from the resident size first so that each implementation gets its own peak."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        memory.reset_cpu_peak()
    for _ in range(calls):
        fn()
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    peak = memory.peak_bytes(device)
    return None if peak is None else peak / 2**20


def environment(device: torch.device) -> dict:
    env = {
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    with contextlib.suppress(ImportError):
        import transformers

        env["transformers"] = transformers.__version__
    return env


def _transformers():
    try:
        import transformers
    except ImportError:
        raise GPT2LabError(
            "gpt2lab bench compares against transformers, which is not installed: pip install 'gpt2lab[bench]'"
        ) from None
    transformers.logging.set_verbosity_error()  # its notes about unused config fields are not ours to show
    return transformers


def hf_twin(model: GPT):
    """A transformers GPT2LMHeadModel holding exactly `model`'s weights."""
    from gpt2lab.hf.format import config_to_hf, state_dict_to_hf

    transformers = _transformers()
    hf_config = transformers.GPT2Config(**config_to_hf(model.config))
    hf = transformers.GPT2LMHeadModel(hf_config)
    missing, unexpected = hf.load_state_dict(state_dict_to_hf(model.state_dict()), strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)
    hf.tie_weights()
    return hf


def add_dtype_ratios(rows: list[Row]) -> None:
    """Each row's tokens/s over the same implementation's at the same batch size in each other dtype measured,
    as extra["vs_<dtype>"] (e.g. a bfloat16 row's vs_float32 = 1.9: bf16 is 1.9x faster)."""
    for row in rows:
        for other in rows:
            if (other.impl, other.batch_size) == (row.impl, row.batch_size) and other.dtype != row.dtype:
                row.extra[f"vs_{other.dtype}"] = row.tokens_per_s / other.tokens_per_s


def widest(dtypes) -> int:
    """Bytes per value of the widest dtype benchmarked: its run is the one that needs the most memory. Checked
    first by both model benchmarks, so an unknown dtype name is refused before anything is measured."""
    return max(resolve_dtype(name).itemsize for name in dtypes)


def copy_model(model: GPT, device) -> GPT:
    clone = GPT(model.config).to(device).train()
    clone.load_state_dict(model.state_dict())
    return clone


# --------------------------------------------------------------------------------------------- report


def report(mode: str, device, rows: list[Row], details: dict) -> dict:
    """Results plus ratios ours/theirs at the same batch size: same dtype, and against their float32."""
    ratios = {}
    for ours in (r for r in rows if r.impl == "gpt2lab"):
        for theirs in (r for r in rows if r.impl != "gpt2lab" and r.batch_size == ours.batch_size):
            if mode == "prepare" or theirs.dtype in (ours.dtype, "float32"):
                key = f"gpt2lab {ours.dtype} / {theirs.impl} {theirs.dtype} (batch {ours.batch_size})"
                ratios[key] = ours.tokens_per_s / theirs.tokens_per_s
    return {
        "mode": mode,
        "environment": environment(device),
        "details": details,
        "results": [asdict(r) for r in rows],
        "ratios": ratios,
    }


def format_table(report: dict) -> str:
    """A plain-text table of a report, for the terminal and the README."""
    header = f"{'impl':<13} {'dtype':<9} {'batch':>5} {'tokens/s':>10} {'ms/iter':>9} {'peak MB':>8}  notes"
    lines = [f"gpt2lab bench {report['mode']} on {report['environment']['device']} "
             f"({report['environment']['cpu_count']} cpus, torch {report['environment']['torch']})", header]
    for r in report["results"]:
        peak = f"{r['peak_mem_mb']:.0f}" if r["peak_mem_mb"] is not None else "-"
        notes = ", ".join(f"{k}={v:.3g}" for k, v in r["extra"].items())
        lines.append(
            f"{r['impl']:<13} {r['dtype']:<9} {r['batch_size']:>5} {r['tokens_per_s']:>10.1f} "
            f"{r['ms_per_iter']:>9.1f} {peak:>8}  {notes}"
        )
    for name, ratio in report["ratios"].items():
        lines.append(f"ratio {name}: {ratio:.2f}x")
    return "\n".join(lines)


def write_json(report: dict, path) -> None:
    from gpt2lab.storage.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(report, indent=2) + "\n")

