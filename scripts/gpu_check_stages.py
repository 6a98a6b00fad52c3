"""The GPU check's five stages (scripts/gpu_check.py runs them in order, each on its own budget).

Each stage is a function (stage, bundle, scratch, profile) made of checks; a check is one or a few subprocesses
(`gpt2lab ...`, pytest, scripts/gpu_check_probe.py) whose results it verifies from their files and output. The
`Profile` says how big: the real thing on a CUDA GPU (124M, T=1024, bf16, compiled), a tiny model on a CPU.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from gpu_check import CheckFailed, CheckSkipped, expect

ADAMW, MUON = "gpt2-124m-fineweb-edu", "gpt2-124m-fineweb-edu-muon"
NOT_ON_CPU = "needs CUDA (this machine has none)"


@dataclass
class Profile:
    name: str  # cuda | cpu
    bench: list[str]  # `gpt2lab bench train` flags besides --batch-size
    bench_batches: list[int]  # the largest that fits is measured
    generate: list[str]
    steps: int  # ~200 on a GPU: enough for the loss to fall clearly
    short_steps: int  # the torchrun and FSDP runs
    train: list[str] = field(default_factory=list)  # --set overrides of both presets
    repeats: int = 2  # of each benchmark
    memory_batch: int = 64  # the preset's micro-batch
    seq_len: int = 1024

    @property
    def cuda(self) -> bool:
        return self.name == "cuda"


def profile_for(cuda: bool) -> Profile:
    if cuda:  # micro-batch 16 x 1024 tokens per step: 200 steps are 3.3M tokens, ~7 s of compute on an H100
        return Profile("cuda", ["--model", "gpt2", "--seq-len", "1024", "--dtypes", "bfloat16", "--iters", "5"],
                       [64, 32, 16], ["--model", "gpt2", "--dtypes", "bfloat16", "--new-tokens", "128"],
                       steps=200, short_steps=40, train=["data.batch_size=16", "data.total_batch_tokens=16384"])
    # the same stages for a 2-layer model, 8 steps: each process spends most of its time starting up
    tiny = ["model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.block_size=64", "data.seq_len=64",
            "data.batch_size=2", "data.total_batch_tokens=128", "runtime.device=cpu", "runtime.compile=false",
            "runtime.precision=fp32", "eval.hellaswag_limit=8", "eval.val_batches=2", "eval.sample_tokens=8"]
    return Profile("cpu", ["--model", "tiny", "--seq-len", "64", "--dtypes", "float32", "--iters", "1"], [2],
                   ["--model", "tiny", "--dtypes", "float32", "--new-tokens", "8"], steps=8, short_steps=4,
                   train=tiny, memory_batch=2, seq_len=64, repeats=1)


def gpt2lab(*args) -> list:
    return [sys.executable, "-m", "gpt2lab", *args]


def sets(assignments) -> list[str]:
    return [flag for a in assignments for flag in ("--set", a)]


# --------------------------------------------------------------------------------------------- 1. environment


def environment(stage, bundle: Path, scratch: Path, profile) -> Profile:
    info = {}

    def probe():
        info.update(stage.probe("torch and the device", "env", timeout=60))
        missing = [name for name, present in info["importable"].items() if not present]
        return {**{k: v for k, v in info.items() if k != "importable"}, "not_importable": missing}

    stage.check("torch and the device", probe)
    profile = profile_for(bool(info.get("cuda")))
    stage.numbers.update(info)
    stage.check("torch.compile on CUDA", lambda: stage.probe("torch.compile", "compile", timeout=60),
                skip=None if profile.cuda else NOT_ON_CPU)
    return profile


# --------------------------------------------------------------------------------------------- 2. CUDA tests


def cuda_tests(stage, bundle: Path, scratch: Path, profile: Profile) -> None:
    """tests/cuda/ (pytest marker `cuda`): every test skips without a GPU, so on a CPU the check is "skipped"."""
    junit = scratch / "cuda-tests.xml"

    def run():
        stage.sh("pytest -m cuda", [sys.executable, "-m", "pytest", "-q", "-rA", "-m", "cuda", "tests/cuda",
                                    "-p", "no:cacheprovider", f"--junitxml={junit}"], allow_fail=True)
        tests = junit_results(junit)
        counts = {s: sum(1 for v in tests.values() if v == s) for s in ("passed", "failed", "skipped")}
        expect(tests, "pytest collected no CUDA tests")
        expect(not counts["failed"], "failed: " + ", ".join(t for t, s in tests.items() if s == "failed"))
        if counts["skipped"] == len(tests):
            raise CheckSkipped(f"all {len(tests)} skipped: {NOT_ON_CPU}")
        return {**counts, "tests": tests}

    stage.check("pytest -m cuda", run)


def junit_results(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise CheckFailed("pytest wrote no results (see logs.txt)")
    results = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        tags = {child.tag for child in case}
        status = "failed" if tags & {"failure", "error"} else "skipped" if "skipped" in tags else "passed"
        results[case.get("name")] = status
    return results


# --------------------------------------------------------------------------------------------- 3. speed


def speed(stage, bundle: Path, scratch: Path, profile: Profile) -> None:
    chosen = {}

    def bench(compiled: bool):
        tried = []
        for batch in ([chosen["batch"]] if compiled else profile.bench_batches):
            out = scratch / f"bench-train-{batch}-{'compiled' if compiled else 'eager'}.json"
            code, text = stage.sh(f"bench train B={batch}", gpt2lab(
                "bench", "train", *profile.bench, "--batch-size", batch, "--no-compare", "--repeats", profile.repeats,
                "--json", out, *(["--compile"] if compiled else [])), allow_fail=True)
            if code == 0:
                chosen["batch"] = batch
                return {"batch_size": batch, "skipped_batches": tried, **train_numbers(json.loads(out.read_text()))}
            if not re.search(r"out of memory|would need", stage.last_stderr, re.IGNORECASE):  # a bug, not a size
                raise CheckFailed(f"B={batch}: " + " | ".join(stage.last_stderr.strip().splitlines()[-3:]))
            tried.append(batch)
        raise CheckFailed(f"no micro-batch of {tried} ran (see logs.txt)")

    eager = stage.check("bench train, eager", lambda: bench(False))
    compiled = stage.check("bench train, compiled", lambda: bench(True),
                           skip=None if profile.cuda else "CPU: compile is checked on CUDA only (inductor's C++ "
                                                          "build takes minutes here)")
    generate = stage.check("bench generate, batch 1 and 8", lambda: generate_numbers(stage, scratch, profile))
    stage.numbers.update(eager_tokens_per_s=eager["numbers"].get("tokens_per_s"),
                         compiled_tokens_per_s=compiled["numbers"].get("tokens_per_s"),
                         compiled_mfu=compiled["numbers"].get("mfu"),
                         decode_b1_fraction_of_bound=generate["numbers"].get("b1_fraction_of_bound"))


def train_numbers(report: dict) -> dict:
    row = report["results"][0]
    return {"tokens_per_s": row["tokens_per_s"], "ms_per_iter": row["ms_per_iter"],
            "mfu": row["extra"].get("mfu_vs_published_bf16_peak"),
            "fraction_of_measured_matmul_peak": row["extra"]["fraction_of_matmul_peak"],
            "peak_allocated_mb": row["peak_mem_mb"], "peak_reserved_mb": row["extra"].get("peak_reserved_mb"),
            "planner_estimate_mb": report["details"]["planner_estimate_mb"],
            "peak_over_planner_estimate": row["extra"].get("peak_over_planner_estimate")}


def generate_numbers(stage, scratch: Path, profile: Profile) -> dict:
    out = scratch / "bench-generate.json"
    stage.sh("bench generate", gpt2lab("bench", "generate", *profile.generate, "--batch-sizes", "1,8",
                                        "--no-compare", "--repeats", profile.repeats, "--json", out))
    report = json.loads(out.read_text())
    numbers = {"read_bandwidth_gb_s": report["details"]["read_bandwidth_gb_s"]}
    for row in report["results"]:
        b = row["batch_size"]
        numbers.update({f"b{b}_tokens_per_s": row["tokens_per_s"], f"b{b}_ms_per_token": row["ms_per_iter"],
                        f"b{b}_fraction_of_bound": row["extra"]["fraction_of_bound"]})
    return numbers


# --------------------------------------------------------------------------------------------- 4. end to end


def end_to_end(stage, bundle: Path, scratch: Path, profile: Profile) -> None:
    """Both 124M presets on the carried shards for `steps`, evaluated, checkpointed, resumed, sampled; then the
    AdamW one under torchrun (NCCL on a GPU) and with FSDP, each in one process."""
    runs = scratch / "runs"
    for name, preset in (("adamw", ADAMW), ("muon", MUON)):
        flags = train_flags(profile, bundle, preset, profile.steps)
        run_dir = runs / name
        first = stage.check(f"{name}: {profile.steps} steps, evaluated",
                            lambda: trained(stage, gpt2lab("train", "--out", run_dir, *flags), run_dir, profile.steps))
        skip = None if first["status"] == "pass" else "the run it continues failed"
        stage.check(f"{name}: --resume is bit-exact", lambda: resumed(stage, flags, run_dir, profile.steps), skip=skip)
        stage.check(f"{name}: gpt2lab sample reads the checkpoint", lambda: sampled(stage, run_dir), skip=skip)
    short = train_flags(profile, bundle, ADAMW, profile.short_steps)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "gpt2lab"]
    ddp = runs / "torchrun"
    stage.check(f"torchrun, 1 process ({'NCCL' if profile.cuda else 'gloo'}), {profile.short_steps} steps",
                lambda: trained(stage, [*torchrun, "train", "--out", ddp, *short], ddp, profile.short_steps))
    fsdp = runs / "fsdp"
    stage.check(f"FSDP, 1 process, {profile.short_steps} steps",
                lambda: trained(stage, gpt2lab("train", "--out", fsdp, *short, "--set", "parallel.strategy=fsdp"),
                                fsdp, profile.short_steps))


def train_flags(profile: Profile, bundle: Path, preset: str, steps: int) -> list[str]:
    half = steps // 2
    return ["--preset", preset, "--steps", steps, "--no-progress", *sets([
        f"data.dir={bundle / 'shakespeare'}", f"schedule.warmup_steps={max(1, steps // 10)}",
        f"eval.val_every={half}", "eval.val_batches=4", f"eval.sample_every={steps}", "eval.sample_tokens=32",
        f"eval.hellaswag_every={steps}", f"eval.hellaswag_data={bundle / 'hellaswag_val.jsonl'}",
        f"checkpoint.every={half}", "checkpoint.keep=2", *profile.train])]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics(run_dir) if "loss" in r}


def trained(stage, argv: list, run_dir: Path, steps: int) -> dict:
    """The run finished its steps, the loss fell, and val loss, HellaSwag, samples and checkpoints were written."""
    _, out = stage.sh(f"train {run_dir.name}", argv)
    records, loss = metrics(run_dir), losses(run_dir)
    expect(sorted(loss) == list(range(1, steps + 1)), f"logged steps {min(loss, default=0)}..{max(loss, default=0)}, "
                                                      f"expected 1..{steps}")
    head, tail = [loss[s] for s in sorted(loss)[:3]], [loss[s] for s in sorted(loss)[-3:]]
    expect(sum(tail) < sum(head), f"the loss did not fall: first {head}, last {tail}")
    val = [r["val_loss"] for r in records if "val_loss" in r]
    hellaswag = [r for r in records if "hellaswag_acc_norm" in r]
    expect(val, "no val loss logged")
    expect(hellaswag, "no HellaSwag result logged")
    samples = run_dir / "samples.txt"
    expect(samples.is_file() and samples.read_text().strip(), "no samples written")
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
    expect(f"step_{steps:08d}" in checkpoints, f"no final checkpoint (found {checkpoints})")
    numbers = {"first_loss": head[0], "last_loss": tail[-1], "val_loss": val[-1],
               "hellaswag_acc_norm": hellaswag[-1]["hellaswag_acc_norm"], "checkpoints": checkpoints}
    timed = [r for r in records if "tokens_per_s" in r][steps // 2:]  # the second half: compiled and warm
    if timed:
        middle = sorted(timed, key=lambda r: r["tokens_per_s"])[len(timed) // 2]
        numbers.update(median_tokens_per_s=middle["tokens_per_s"], mfu=middle.get("mfu"))
    if "parallel.strategy" in out or "strategy" in out:
        numbers["strategy_lines"] = [line for line in out.splitlines() if "strategy" in line][:2]
    return numbers


def resumed(stage, flags: list, run_dir: Path, steps: int) -> dict:
    """A copy of the run without its last checkpoint, resumed: the same losses and the same final weights."""
    copy = run_dir.with_name(run_dir.name + "-resumed")
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns(f"step_{steps:08d}", ".gpt2lab.lock"))
    _, out = stage.sh(f"resume {run_dir.name}", gpt2lab("train", "--out", copy, "--resume", *flags))
    expect("resuming from" in out, "the run did not resume from its checkpoint")
    a, b = losses(run_dir), losses(copy)
    differ = [s for s in a if a[s] != b.get(s)]
    expect(not differ, f"losses differ from step {differ[0] if differ else 0}: {a.get(differ[0]) if differ else 0} "
                       f"vs {b.get(differ[0]) if differ else 0}")
    final = f"checkpoints/step_{steps:08d}/model.safetensors"
    ours, theirs = run_dir / final, copy / final
    if ours.is_file() and theirs.is_file() and ours.read_bytes() == theirs.read_bytes():  # no torch needed
        return {"steps_compared": len(a), "weights": "model.safetensors byte-identical"}
    same = stage.probe(f"weights {run_dir.name}", "weights", run_dir, copy, timeout=120)
    expect(same["equal"], f"final weights differ: {same['differing']} (max |diff| {same['max_abs_diff']:.3g})")
    return {"steps_compared": len(a), "weights": f"{same['tensors']} tensors equal"}


def sampled(stage, run_dir: Path) -> dict:
    _, out = stage.sh(f"sample {run_dir.name}", gpt2lab("sample", run_dir, "--prompt", "ROMEO:",
                                                       "--max-new-tokens", "8", "--num-samples", "2"))
    expect("ROMEO:" in out, "no sample printed")
    return {"sample": out.strip()[:160]}


# --------------------------------------------------------------------------------------------- 5. memory


def memory(stage, bundle: Path, scratch: Path, profile: Profile) -> None:
    """At the preset's micro-batch, eager (the planner models an eager step); then what "auto" picks."""
    T = profile.seq_len
    common = [f"data.dir={bundle / 'shakespeare'}", "eval.val_every=0", "eval.sample_every=0", "eval.hellaswag_every=0",
              *profile.train, "runtime.compile=false", "checkpoint.every=1000"]

    def measured():
        B = profile.memory_batch
        result = stage.probe(f"memory at B={B}", "memory", ADAMW, *common, "schedule.max_steps=3",
                             f"data.batch_size={B}", f"data.total_batch_tokens={B * T}", timeout=120)
        stage.numbers["planner_error"] = result.get("planner_error")
        return result

    def auto():
        return stage.probe("batch_size auto", "memory", ADAMW, *common, "schedule.max_steps=1", "data.batch_size=auto",
                           f"data.total_batch_tokens={max(profile.bench_batches) * T * 2}", timeout=120)

    stage.check(f"planner vs measured peak at the preset's micro-batch ({profile.memory_batch})", measured)
    stage.check('data.batch_size = "auto"', auto)


STAGES = [("environment", environment), ("cuda_tests", cuda_tests), ("speed", speed), ("end_to_end", end_to_end),
          ("memory", memory)]
