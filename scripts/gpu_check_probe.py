"""The GPU check's in-process measurements (scripts/gpu_check.py runs each as a subprocess, with a timeout). Each
prints one JSON object as its last line of output.

    env                      the machine: GPU, memory, driver, torch/CUDA, bf16, TF32, what is importable
    compile                  a tiny GPT compiled on CUDA: its logits against eager, and the seconds compiling took
    weights RUN_A RUN_B      the newest checkpoints of two runs, tensor by tensor: equal bit for bit?
    memory PRESET [K=V ...]  train a few steps of PRESET (with overrides) in this process: the planner's estimate
                             against torch.cuda.max_memory_allocated / reserved, and the micro-batch used
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
import time

import torch


def env() -> dict:
    import gpt2lab

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "gpt2lab": gpt2lab.__file__, "cuda": torch.cuda.is_available(),
            "importable": {name: _importable(name)
                           for name in ("datasets", "fastapi", "uvicorn", "transformers", "triton")}}
    if info["cuda"]:
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                    bf16=torch.cuda.is_bf16_supported(), tf32=props.major >= 8, driver=_driver())
    return info


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a finder that refuses the name outright
        return False


def _driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
        return out or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def compile_check() -> dict:
    from gpt2lab.model.config import GPTConfig
    from gpt2lab.model.gpt import GPT

    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=512)).cuda().eval()
    idx = torch.randint(0, 512, (2, 64), device="cuda")
    start = time.perf_counter()
    with torch.no_grad():
        eager = model(idx)[0]
        compiled = torch.compile(model)(idx)[0]
    torch.cuda.synchronize()
    return {"compile_seconds": round(time.perf_counter() - start, 1),
            "max_abs_diff_vs_eager": (compiled - eager).abs().max().item()}


def weights(run_a: str, run_b: str) -> dict:
    from gpt2lab.model.gpt import load_model

    a, b = load_model(run_a).state_dict(), load_model(run_b).state_dict()
    differ = [k for k in a if k not in b or not torch.equal(a[k], b[k])]
    return {"tensors": len(a), "equal": a.keys() == b.keys() and not differ, "differing": differ[:5],
            "max_abs_diff": max(((a[k] - b[k]).abs().max().item() for k in differ if k in b), default=0.0)}


def memory_check(preset: str, *assignments: str) -> dict:
    """Train PRESET with the overrides in this process; what the planner said against what the step took."""
    from gpt2lab.runtime import memory
    from gpt2lab.train.config_files import command_line_overrides, resolve_config
    from gpt2lab.train.plan import make_plan, plan_device
    from gpt2lab.train.trainer import train

    config = resolve_config(preset, None, command_line_overrides(list(assignments)))
    plan = make_plan(config, plan_device(config, None), 1)
    lines = []
    with tempfile.TemporaryDirectory() as run_dir:
        result = train(config, run_dir, log=lines.append, progress=False)
    cuda = torch.cuda.is_available() and config.runtime.device != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    measured = memory.peak_bytes(device)
    out = {"exit_code": result.exit_code, "estimate_bytes": plan.memory.total,
           "batch_size_planned": plan.config.data.batch_size, "batch_size_auto": plan.batch_size_auto,
           "batch_size_trained": _trained_batch(lines), "peak_bytes": measured,
           "log": [line for line in lines if "batch" in line][:4]}
    if cuda:
        out.update(max_memory_allocated=torch.cuda.max_memory_allocated(),
                   max_memory_reserved=torch.cuda.max_memory_reserved())
    if measured:
        out["planner_error"] = abs(plan.memory.total / measured - 1)
    return out


def _trained_batch(lines: list[str]) -> int | None:
    """B of the trainer's "batch: N tokens/step = B x T x ..." line."""
    import re

    found = next((re.search(r"= (\d+)(?: \(auto\))? x", line) for line in lines if line.startswith("batch:")), None)
    return int(found.group(1)) if found else None


def main(argv: list[str]) -> None:
    command, args = argv[0], argv[1:]
    fn = {"env": env, "compile": compile_check, "weights": weights, "memory": memory_check}[command]
    print(json.dumps(fn(*args), default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
