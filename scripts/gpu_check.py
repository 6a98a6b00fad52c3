"""The GPU check: one prepared command that proves every CUDA path of gpt2lab (docs/gpus.md, "GPU check").

    python scripts/gpu_check.py bundle DIR      # here, online: what the offline GPU machine cannot fetch
    python scripts/gpu_check.py run DIR OUT     # there: five time-boxed stages -> OUT/report.json, report.md, logs.txt

(scripts/gpu_check.sh wraps both.) The GPU machine has torch but no network, no `datasets`, FastAPI or uvicorn, and
gpt2lab is not installed there: every stage runs gpt2lab from this source tree (PYTHONPATH) in a subprocess with
its own timeout, so a crash, a hang or a CUDA error costs one check, never the report. Without a GPU the same
stages run shrunk to a tiny model on the CPU in about a minute (the CUDA-only checks say "skipped"), which is how
tests/e2e/test_gpu_check.py keeps this script from rotting between GPU slots.

This driver never imports torch (a broken torch must still give a report); the in-process measurements (the
environment, peak memory, weights compared) are scripts/gpu_check_probe.py, run as subprocesses too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBE = REPO / "scripts" / "gpu_check_probe.py"
BUNDLE_LIMIT = 20 * 2**20
WHISPER_SDIST, WHISPER_MEMBER = "openai-whisper==20250625", "whisper/assets/gpt2.tiktoken"
BPE_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# tiktoken's cache names a download by the sha1 of its URL: the ranks under that name serve r50k_base offline
R50K_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
HELLASWAG_EXAMPLES = 50

# Seconds each stage may take on one H100 (the whole: 480 s = 8 minutes, leaving a slot of ~15 minutes time for
# the machine's start-up and one re-run). A check gets what is left of its stage's budget; one that would start
# with nothing left is recorded as failed ("stage budget spent"), and the next stage runs on its own budget.
BUDGETS = {"environment": 20, "cuda_tests": 55, "speed": 120, "end_to_end": 240, "memory": 45}
assert sum(BUDGETS.values()) <= 480
# On a CPU (the shrunk run, a smoke test of this script) the budgets only catch a hang: a busy 2-core machine
# must not fail it for being slow. The tiny model's stages take about a minute on an idle one.
CPU_BUDGET_SCALE = 5


# --------------------------------------------------------------------------------------------- bundle


def bundle(directory: Path) -> dict:
    """Write the BPE ranks, the prepared Shakespeare shards and a HellaSwag-format file into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ranks = directory / "gpt2.tiktoken"
    fetch_ranks(ranks, env)
    tiktoken_cache = directory / "tiktoken"
    tiktoken_cache.mkdir(exist_ok=True)
    shutil.copyfile(ranks, tiktoken_cache / hashlib.sha1(R50K_URL.encode()).hexdigest())
    shards = directory / "shakespeare"
    if not (shards / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "gpt2lab", "prepare", "shakespeare", "--out", str(shards),
                        "--no-progress", "--overwrite"], env=env, check=True)
    write_hellaswag(directory / "hellaswag_val.jsonl", HELLASWAG_EXAMPLES)
    files = {str(p.relative_to(directory)): p.stat().st_size for p in sorted(directory.rglob("*")) if p.is_file()
             and p.name != "bundle.json"}
    total = sum(files.values())
    if total > BUNDLE_LIMIT:
        raise SystemExit(f"gpu_check bundle: {directory} holds {total / 2**20:.1f} MB, more than 20 MB")
    info = {"files": files, "total_bytes": total, "commit": git_commit()}
    (directory / "bundle.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"gpu_check bundle: {len(files)} files, {total / 2**20:.1f} MB in {directory}")
    return info


def fetch_ranks(destination: Path, env: dict) -> None:
    """The verified BPE ranks: gpt2lab's cached copy if it has one, else from the package index (the whisper
    sdist), through gpt2lab's own verified fetch."""
    code = ("import shutil, sys; from pathlib import Path\n"
            "from gpt2lab.storage.cache import cache_dir, fetch_verified\n"
            "dest, cached = Path(sys.argv[1]), cache_dir() / 'gpt2.tiktoken'\n"
            "if cached.is_file() and not dest.exists(): shutil.copyfile(cached, dest)\n"
            f"fetch_verified({WHISPER_SDIST!r}, {BPE_SHA256!r}, dest, member={WHISPER_MEMBER!r})")
    subprocess.run([sys.executable, "-c", code, str(destination)], env=env, check=True)


def write_hellaswag(path: Path, n: int) -> None:
    """`n` examples in the official hellaswag_val.jsonl format (every field the real file has), made up: the
    check needs the evaluation to run on the GPU machine, not a meaningful accuracy."""
    import random

    rng = random.Random(0)
    words = ("the a man woman dog child runs jumps into water quickly slowly ball kitchen then and of over bright "
             "knife bowl lake rope paints fence snow skis camera smiles carefully").split()

    def phrase(lo, hi):
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    lines = []
    for i in range(n):
        ctx_a, ctx_b = phrase(3, 12).capitalize() + ".", phrase(1, 5)
        lines.append(json.dumps(dict(
            ind=i, activity_label=rng.choice(["Cooking", "Skiing", "Painting fence"]), ctx_a=ctx_a, ctx_b=ctx_b,
            ctx=f"{ctx_a} {ctx_b}", endings=[phrase(2, 10) + "." for _ in range(4)],
            source_id=f"gpu-check~{i}", split="val", split_type="indomain", label=rng.randint(0, 3))))
    path.write_text("\n".join(lines) + "\n")


def git_commit() -> str | None:
    """The tree's commit; where the tree travelled without .git (or git), the one the bundle was made at."""
    try:
        result = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
        return result.stdout.strip() or None
    except OSError:
        return None


# --------------------------------------------------------------------------------------------- running checks


class Stage:
    """One stage's checks, each a subprocess whose output goes to the one log; the stage's budget bounds them."""

    def __init__(self, name: str, log, env: dict, budget: float):
        self.name, self.log, self.env, self.budget = name, log, env, budget
        self.deadline = time.monotonic() + budget
        self.checks: list[dict] = []
        self.numbers: dict = {}

    def sh(self, check: str, argv: list, timeout: float = 600, allow_fail: bool = False) -> tuple[int, str]:
        """Run argv, logged; (exit code, stdout). A non-zero exit (unless allowed) or a timeout fails `check`."""
        argv = [str(a) for a in argv]
        left = self.deadline - time.monotonic()
        if left < 1:
            raise CheckFailed(f"not run: the {self.name} stage's budget ({self.budget:.0f} s) is spent")
        self.log.write(f"\n===== {self.name} / {check}: {' '.join(argv)}\n")
        self.log.flush()
        self.commands.append(" ".join(argv))
        try:
            result = run_in_own_group(argv, self.env, min(timeout, left))
        except subprocess.TimeoutExpired as e:
            self.log.write(_text(e.stdout) + _text(e.stderr) + f"\n----- timed out after {min(timeout, left):.0f} s\n")
            raise CheckFailed(f"timed out after {min(timeout, left):.0f} s: {' '.join(argv[:6])} ...") from None
        self.log.write(result.stdout + result.stderr + f"\n----- exit {result.returncode}\n")
        self.log.flush()
        self.last_stderr = result.stderr
        if result.returncode != 0 and not allow_fail:
            tail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-3:]
            raise CheckFailed(f"exit {result.returncode}: " + " | ".join(tail))
        return result.returncode, result.stdout

    def probe(self, check: str, *args, timeout: float = 600) -> dict:
        """scripts/gpu_check_probe.py's JSON answer (its last line of output)."""
        _, out = self.sh(check, [sys.executable, PROBE, *args], timeout)
        return json.loads(out.strip().splitlines()[-1])

    def check(self, name: str, fn, skip: str | None = None) -> dict:
        """Run fn() (-> numbers) as the check `name`; `skip`: why it does not run here (then it is "skipped")."""
        self.commands: list[str] = []
        start = time.monotonic()
        record = {"name": name, "status": "pass", "numbers": {}, "error": None}
        if skip:
            record.update(status="skipped", error=skip)
        else:
            try:
                record["numbers"] = fn() or {}
            except CheckSkipped as e:
                record.update(status="skipped", error=str(e))
            except CheckFailed as e:
                record.update(status="fail", error=str(e))
            except Exception as e:  # a bug in this script or an unreadable output: this check, not the report
                record.update(status="fail", error=f"{type(e).__name__}: {e}")
        record.update(seconds=round(time.monotonic() - start, 1), commands=self.commands)
        self.checks.append(record)
        return record

    def result(self) -> dict:
        statuses = {c["status"] for c in self.checks}
        status = "fail" if "fail" in statuses else "pass" if "pass" in statuses else "skipped"
        return {"name": self.name, "status": status, "budget_s": self.budget, "checks": self.checks,
                "numbers": self.numbers}


def run_in_own_group(argv: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """subprocess.run, but a timeout kills the command's whole process group: torchrun's workers and inductor's
    compile workers too, which would otherwise live on holding GPU memory through the next checks."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise subprocess.TimeoutExpired(argv, timeout, stdout, stderr) from None
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


class CheckFailed(Exception):
    pass


class CheckSkipped(Exception):
    """A check that ran and found nothing to do here (all CUDA tests skipped on a CPU)."""


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def expect(condition: bool, problem: str) -> None:
    if not condition:
        raise CheckFailed(problem)


def offline_env(bundle_dir: Path, scratch: Path) -> dict:
    """The environment of every stage: gpt2lab from this tree, the BPE ranks from the bundle only, no hub."""
    cache = scratch / "gpt2lab-cache"  # gpt2lab writes derived files into its cache: never into the bundle
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bundle_dir / "gpt2.tiktoken", cache / "gpt2.tiktoken")
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "GPT2LAB_CACHE": str(cache),
            "GPT2LAB_BPE_FILE": str(bundle_dir / "gpt2.tiktoken"), "TIKTOKEN_CACHE_DIR": str(bundle_dir / "tiktoken"),
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TORCHINDUCTOR_CACHE_DIR": str(scratch / "inductor"), "PYTHONUNBUFFERED": "1"}


def run(bundle_dir: Path, out: Path, only: list[str] | None = None) -> dict:
    """All five stages, in order, whatever fails; OUT/report.json, report.md and logs.txt. `only`: these stages
    (and the environment, which says what the machine is), for a second try after a fix."""
    from gpu_check_stages import STAGES, profile_for

    unknown = set(only or ()) - {name for name, _ in STAGES}
    if unknown:
        raise SystemExit(f"gpu_check run: no stage {', '.join(sorted(unknown))}; the stages are "
                         f"{', '.join(name for name, _ in STAGES)}")

    bundle_dir, out = bundle_dir.resolve(), out.resolve()
    for needed in ("gpt2.tiktoken", "shakespeare/manifest.json", "hellaswag_val.jsonl"):
        if not (bundle_dir / needed).is_file():
            raise SystemExit(f"gpu_check run: {bundle_dir / needed} is missing; run `scripts/gpu_check.sh bundle "
                             f"{bundle_dir}` first (on a machine with internet)")
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    bundled = json.loads((bundle_dir / "bundle.json").read_text()) if (bundle_dir / "bundle.json").is_file() else {}
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
              "commit": git_commit() or f"{bundled.get('commit')} (the bundle's)",
              "bundle": str(bundle_dir), "budgets_s": BUDGETS, "stages": []}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp, open(out / "logs.txt", "w") as log:
        scratch = Path(tmp)
        env = offline_env(bundle_dir, scratch)
        profile = None
        for name, stage_fn in STAGES:
            if only and name not in only and name != "environment":
                report["stages"].append({"name": name, "status": "skipped", "budget_s": 0, "numbers": {}, "checks": [
                    {"name": "not selected", "status": "skipped", "numbers": {}, "seconds": 0.0, "commands": [],
                     "error": f"run with only {', '.join(only)}"}]})
                continue
            budget = BUDGETS[name] * (1 if profile is None or profile.cuda else CPU_BUDGET_SCALE)
            stage = Stage(name, log, env, budget)
            print(f"gpu_check: stage {name} (budget {budget} s)", flush=True)
            profile = stage_fn(stage, bundle_dir, scratch, profile) or profile or profile_for(False)
            if not profile.cuda:  # a tiny model on a CPU: one thread is fastest, and ~10x so on a busy machine
                env.setdefault("OMP_NUM_THREADS", "1")
            result = stage.result()
            report["stages"].append(result)
            print(f"gpu_check: stage {name}: {result['status']} "
                  f"({sum(c['seconds'] for c in result['checks']):.0f} s)", flush=True)
    report["device"] = profile.name
    report["seconds"] = round(time.time() - started, 1)
    report["targets"] = targets(report)
    write_report(report, out)
    return report


def targets(report: dict) -> list[dict]:
    """The issue's targets against this run's numbers (met: None where the number is missing, e.g. on a CPU)."""
    numbers = {s["name"]: s["numbers"] for s in report["stages"]}
    speed, memory = numbers.get("speed", {}), numbers.get("memory", {})
    rows = [("compiled training tokens/s (124M, T=1024, bf16)", speed.get("compiled_tokens_per_s"), 500_000, ">="),
            ("compiled MFU vs dense bf16 peak", speed.get("compiled_mfu"), 0.45, ">="),
            ("planner vs measured peak (|estimate/measured - 1|)", memory.get("planner_error"), 0.15, "<="),
            ("decode batch 1, fraction of the bandwidth bound", speed.get("decode_b1_fraction_of_bound"), 0.70, ">=")]
    gpu = report["device"] == "cuda"
    return [{"target": what, "value": value, "goal": f"{op} {goal}",
             "met": None if value is None or not gpu else (value >= goal if op == ">=" else value <= goal)}
            for what, value, goal, op in rows]


def write_report(report: dict, out: Path) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    lines = [f"# gpt2lab GPU check: {report['device']}, {report['started']}", "",
             f"commit {report['commit']}, {report['seconds']:.0f} s in all", "",
             "| stage | status | check | s | numbers / error |", "|---|---|---|---|---|"]
    for stage in report["stages"]:
        for i, c in enumerate(stage["checks"]):
            shown = c["error"] if c["error"] else ", ".join(f"{k}={_short(v)}" for k, v in c["numbers"].items())
            head = (stage["name"], stage["status"]) if i == 0 else ("", "")
            lines.append(f"| {head[0]} | {head[1]} | {c['name']}: {c['status']} | {c['seconds']:.0f} | "
                         f"{shown.replace('|', '/').replace(chr(10), ' ⏎ ')[:400]} |")  # one table row each
    lines += ["", "| target | value | goal | met |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {_short(t['value'])} | {t['goal']} | {t['met']} |" for t in report["targets"]]
    lines += ["", "Commands: report.json (each check's `commands`); output: logs.txt."]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)[:160]
    return str(value)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "bundle":
        bundle(Path(argv[1]).resolve())
        return 0
    if len(argv) >= 3 and argv[0] == "run":
        report = run(Path(argv[1]), Path(argv[2]), argv[3:])
        print((Path(argv[2]) / "report.md").read_text())
        failed = [s["name"] for s in report["stages"] if s["status"] == "fail"]
        return 1 if failed else 0
    print("usage: gpu_check.py bundle DIR | run DIR OUT [STAGE ...]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    # run as the module `gpu_check`, the one gpu_check_stages imports (not a second copy named __main__)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import gpu_check

    sys.exit(gpu_check.main(sys.argv[1:]))
