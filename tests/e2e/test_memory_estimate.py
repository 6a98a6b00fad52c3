"""The dry run's memory estimate against the measured peak of real training: each config is planned by
`gpt2lab train --dry-run --json`, then trained for 10 steps by `gpt2lab train` three times side by side, all in
fresh processes, and each trainer's peak resident set size is read as `/usr/bin/time -v` reads it: by a small
launcher process that waits for it (`wait4`'s ru_maxrss). The configs vary depth, width, micro-batch, context,
vocabulary, precision, optimizer and accumulation, and in each of them the model's own memory (weights, optimizer
state, activations, the B x T x vocab loss buffers) is most of the peak, so the process's fixed runtime (~0.3 GiB)
cannot carry the comparison.

Why a launcher: a process's ru_maxrss also counts the resident memory its parent had when it started it (Linux keeps
the larger across exec), and pytest itself grows past 2 GB over the whole suite; /usr/bin/time is small, and so is
the launcher. Why 10 steps, and the highest of three: on a CPU the trainer's glibc heap fragments over the first
steps and the peak settles by then (see gpt2lab.runtime.memory.CPU_HEAP_SLACK), which is what the estimate is for; but now
and then a run's heap happens not to fragment and its peak stays a loss buffer or two lower (a 3 x 512 bf16 config:
1,618 MiB in three of sixteen runs, 1,872-2,263 in the others), so the run to compare with is the highest of a few.
Not here: the fp32 demo shape (6 x 128, B=8 x T=128, AdamW) in one micro-step, the most erratic (1,183-1,832 MiB
over six runs); with 4 micro-steps its heap fragments more and more steadily (2,227-2,644 MiB over six)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from gpt2lab.runtime.device import native_bf16
from tests.conftest import REPO
from tests.train_utils import cli_flags, write_dataset

STEPS = 10
RUNS = 3  # side by side, compared by the highest (see above)
BASE = {"schedule__max_steps": STEPS, "schedule__warmup_steps": 2, "eval__val_batches": 0,
        "checkpoint__every": 1000, "checkpoint__keep": 1}
# Three shapes, each run three times side by side, are a third of the whole suite's CPU time: bf16 with Muon, a
# wide model with the real vocabulary, and accumulation (where the heap's churn is largest).
CONFIGS = {
    "6 layers x 128, B=8 x T=128, bf16, Muon": dict(
        model__n_layer=6, model__n_head=4, model__n_embd=128, model__block_size=128, data__seq_len=128,
        data__batch_size=8, data__total_batch_tokens=1024, runtime__precision="bf16", optim__name="muon"),
    "8 layers x 384, B=4 x T=128, vocab 50257, fp32": dict(
        model__n_layer=8, model__n_head=6, model__n_embd=384, model__block_size=128, model__vocab_size=50257,
        data__seq_len=128, data__batch_size=4, data__total_batch_tokens=512),
    "6 layers x 128, B=8 x T=128, fp32, 4 micro-steps": dict(
        model__n_layer=6, model__n_head=4, model__n_embd=128, model__block_size=128, data__seq_len=128,
        data__batch_size=8, data__total_batch_tokens=4096),
}


# What /usr/bin/time does: start the command, wait for it, report its peak resident set size (kilobytes on Linux).
# First, as `setarch -R` does, it turns off address-space randomisation for itself and so for the command: see
# measured_peaks.
LAUNCHER = ("import ctypes, os, subprocess, sys; ctypes.CDLL(None).personality(0x0040000); "
            "child = subprocess.Popen(sys.argv[1:]); _, status, usage = os.wait4(child.pid, 0); "
            "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)")


def measured_peaks(args_list, env) -> list[int]:
    """Run commands side by side to the end, each under the launcher; the peak resident set size of each, in bytes.
    Output goes to files: pipes could fill and block.

    How far the heap fragments is decided mostly by the process's memory layout (randomised on each start) and
    Python's hash seed (which orders sets and dicts, and so small allocations): with both fixed, four identical runs
    measured the same peak to the MiB, and with either left random, the same config measured 1.9-2.5 GB. So the runs
    are three fixed draws, hash seeds 0, 1 and 2 without address randomisation. What is left to chance (here, the
    temporary directory's name, which changes the size of some allocations) moved a config's highest of three by up
    to 5 % between test runs, against up to 15 % with random draws."""
    processes = []
    for seed, args in enumerate(args_list):
        log = open(f"{args[args.index('--out') + 1]}.log", "w+")
        processes.append((subprocess.Popen([sys.executable, "-c", LAUNCHER, *args],
                                           env={**env, "PYTHONHASHSEED": str(seed)}, stdout=log,
                                           stderr=subprocess.STDOUT), log))
    peaks = []
    for process, log in processes:
        process.wait()
        log.seek(0)
        output = log.read()
        log.close()
        code, kilobytes = output.split()[-2:]
        assert code == "0", output[-2000:]
        peaks.append(int(kilobytes) * 1024)
    return peaks


def logged_peaks(run) -> list[float]:
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [r["peak_mem_mb"] for r in records if "peak_mem_mb" in r]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in kilobytes, glibc's heap: Linux")
def test_estimated_peak_memory_is_within_20_percent_of_the_measured_peak(tmp_path):
    data = write_dataset(tmp_path / "data", train_tokens=60_000)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    gpt2lab = [sys.executable, "-m", "gpt2lab", "train"]
    rows, model_dominated = [], 0
    for i, (name, changes) in enumerate(CONFIGS.items()):
        if changes.get("runtime__precision") == "bf16" and not native_bf16(torch.device("cpu")):
            # Emulated bf16 (a CPU without AVX512-BF16/AMX) runs ~500x slower than fp32, and `precision = auto`
            # never picks it there: the same shape in fp32 keeps the shape's coverage at the cost of fp32's.
            name, changes = name.replace("bf16", "fp32 (no native bf16 here)"), {**changes, "runtime__precision": "fp32"}
        flags = cli_flags(data, **{**BASE, **changes})
        planned = subprocess.run([*gpt2lab, "--dry-run", "--json", *flags], env=env, capture_output=True, text=True)
        assert planned.returncode == 0, planned.stderr
        plan = json.loads(planned.stdout)
        estimate, runtime = plan["memory_per_device_bytes"], plan["memory_breakdown_bytes"]["runtime"]
        runs = [tmp_path / f"config{i}-run{r}" for r in range(RUNS)]
        peaks = measured_peaks([[*gpt2lab, "--out", str(run), "--no-progress", *flags] for run in runs], env)
        for run, peak in zip(runs, peaks):
            logged = logged_peaks(run)
            assert len(logged) == STEPS and logged == sorted(logged)  # each of the first steps; a peak only grows
            # the log sees what wait4 sees (wait4 also sees the final checkpoint's save; the kernel's resident-size
            # counters lag by a few hundred KiB, so a reading the log kept can be a little above what wait4 reports)
            assert logged[-1] - 2 <= peak / 2**20 < logged[-1] * 1.2
        peak = max(peaks)  # the peak to budget for; a run whose heap happens not to fragment stays lower
        rows.append(f"{name:<46} estimate {estimate / 2**20:6.0f} MiB  measured {peak / 2**20:6.0f} MiB (highest of "
                    f"{', '.join(f'{p / 2**20:.0f}' for p in peaks)})  {estimate / peak - 1:+.0%}")
        model_dominated += (peak - runtime) > 0.5 * peak
        assert abs(estimate - peak) <= 0.2 * peak, "\n".join(rows)
    print("\n" + "\n".join(rows))
    assert model_dominated == len(CONFIGS)  # the fixed runtime is not what makes the comparison pass
