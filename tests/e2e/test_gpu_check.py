"""scripts/gpu_check.sh, bundle then run, under the GPU machine's conditions as far as a CPU machine can copy them,
so that the check cannot rot between GPU slots: the run step sees no network (only loopback, for torchrun), cannot
import `datasets`, FastAPI or uvicorn, and has no installed gpt2lab (a copy of the source tree on PYTHONPATH, and
only that copy). Without a GPU every stage is reached, shrunk to a tiny model: the CUDA-only checks say skipped,
all the others pass, and the report parses."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import REPO

# Imported at start-up by every Python of the run step (it is first on PYTHONPATH): the GPU machine's limits.
GPU_MACHINE = textwrap.dedent('''
    import importlib.machinery, ipaddress, socket, sys

    TREE = {tree!r}
    MISSING = {{"datasets", "fastapi", "uvicorn"}}

    class GPUMachine:
        """No `datasets`/FastAPI/uvicorn; gpt2lab only from the tree copy, as if not installed."""
        def find_spec(self, name, path=None, target=None):
            top = name.partition(".")[0]
            if top in MISSING:
                raise ModuleNotFoundError(f"No module named {{name!r}} (the GPU machine has none)", name=name)
            if name == "gpt2lab":
                spec = importlib.machinery.PathFinder.find_spec(name, [TREE])
                if spec is None:
                    raise ModuleNotFoundError("gpt2lab is not installed on the GPU machine", name=name)
                return spec
            return None

    sys.meta_path.insert(0, GPUMachine())

    def _local(address):
        host = address[0] if isinstance(address, tuple) else address
        if not isinstance(host, str) or host in ("localhost", ""):
            return True
        try:
            return ipaddress.ip_address(host.split("%")[0]).is_loopback
        except ValueError:
            return False

    _connect = socket.socket.connect

    def connect(self, address):
        if self.family != socket.AF_UNIX and not _local(address):
            raise OSError(101, "Network is unreachable (the GPU machine has no network)")
        return _connect(self, address)

    socket.socket.connect = connect
    _getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host not in (None, "localhost") and not _local((host,)) and host != socket.gethostname():
            raise socket.gaierror(-2, "Name or service not known (the GPU machine has no network)")
        return _getaddrinfo(host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo
''')

CPU_SKIPS = {("environment", "torch.compile on CUDA"), ("cuda_tests", "pytest -m cuda"),
             ("speed", "bench train, compiled")}


def copy_of_the_tree(destination):
    """The files git would ship (tracked and new, not ignored): what travels to the GPU machine."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z"],
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def test_bundle_then_run_reaches_every_stage_offline_without_the_missing_packages(tmp_path):
    tree = copy_of_the_tree(tmp_path / "tree")
    bundle = tmp_path / "bundle"
    made = subprocess.run(["bash", tree / "scripts/gpu_check.sh", "bundle", bundle], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=600)
    assert made.returncode == 0, made.stderr
    assert sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file()) <= 20 * 2**20

    shim = tmp_path / "gpu-machine"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(GPU_MACHINE.format(tree=str(tree)))
    env = {k: v for k, v in os.environ.items() if k not in ("GPT2LAB_CACHE", "GPT2LAB_BPE_FILE")}
    env.update(PYTHON=sys.executable, PYTHONPATH=str(shim), HOME=str(tmp_path / "home"),  # no user cache either
               XDG_CACHE_HOME=str(tmp_path / "home/.cache"))
    out = tmp_path / "out"
    ran = subprocess.run(["bash", tree / "scripts/gpu_check.sh", "run", bundle, out], capture_output=True, text=True,
                         env=env, timeout=1800)
    report = json.loads((out / "report.json").read_text())
    statuses = {(s["name"], c["name"]): (c["status"], c["error"]) for s in report["stages"] for c in s["checks"]}
    assert [s["name"] for s in report["stages"]] == ["environment", "cuda_tests", "speed", "end_to_end", "memory"]
    failed = {k: v for k, v in statuses.items() if v[0] == "fail"}
    assert not failed, failed
    assert {k for k, v in statuses.items() if v[0] == "skipped"} == CPU_SKIPS
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert len(statuses) == 16  # every check reached

    env_numbers = report["stages"][0]["numbers"]
    assert env_numbers["gpt2lab"] == str(tree / "gpt2lab" / "__init__.py")  # the copy, not an installed gpt2lab
    assert {"datasets", "fastapi", "uvicorn"} <= set(report["stages"][0]["checks"][0]["numbers"]["not_importable"])
    tests = report["stages"][1]["checks"][0]
    assert "all" in tests["error"] and "skipped" in tests["error"]  # pytest ran the CUDA tests, which skipped
    end_to_end = {c["name"]: c["numbers"] for c in report["stages"][3]["checks"]}
    assert end_to_end["adamw: --resume is bit-exact"]["steps_compared"] == 8
    assert end_to_end["muon: 8 steps, evaluated"]["last_loss"] < end_to_end["muon: 8 steps, evaluated"]["first_loss"]
    assert report["stages"][4]["checks"][1]["numbers"]["batch_size_trained"] >= 1  # what "auto" chose, and trained

    files = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert files == ["logs.txt", "report.json", "report.md"]
    assert all((out / name).stat().st_size <= 16 * 2**20 for name in files)
    markdown = (out / "report.md").read_text()
    assert all(stage in markdown for stage in ("environment", "cuda_tests", "speed", "end_to_end", "memory"))


@pytest.mark.parametrize("args, message", [(["run", "no-bundle", "out"], "no-bundle/gpt2.tiktoken is missing"),
                                           (["nonsense"], "usage:")])
def test_a_missing_bundle_or_a_wrong_command_is_one_line(tmp_path, args, message):
    result = subprocess.run(["bash", REPO / "scripts/gpu_check.sh", *args], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode != 0 and not (tmp_path / "out").exists()
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr


def test_a_failing_or_hanging_check_is_recorded_and_the_next_one_runs(tmp_path, monkeypatch):
    """The driver's bookkeeping, with stand-in commands: a non-zero exit and a timeout each fail their own check
    (error said), the next check still runs, a stage whose budget is spent records the rest as not run, and the
    report is written with the failures and the targets judged only on a GPU."""
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    import gpu_check

    monkeypatch.setitem(gpu_check.BUDGETS, "speed", 3)
    with open(tmp_path / "logs.txt", "w") as log:
        stage = gpu_check.Stage("speed", log, dict(os.environ), budget=3)
        stage.check("exits 3", lambda: stage.sh("exit", [sys.executable, "-c", "import sys; sys.exit(3)"]))
        stage.check("hangs", lambda: stage.sh("sleep", [sys.executable, "-c", "import time; time.sleep(30)"],
                                              timeout=0.5))
        stage.check("passes", lambda: {"tokens_per_s": 1.0} if stage.sh("ok", [sys.executable, "-c", ""])[0] == 0
                    else None)
        stage.numbers["compiled_tokens_per_s"] = 600_000.0
        stage.deadline = 0  # the budget is spent
        stage.check("too late", lambda: stage.sh("late", [sys.executable, "-c", ""]))
    checks = {c["name"]: c for c in stage.result()["checks"]}
    assert checks["exits 3"]["status"] == "fail" and checks["exits 3"]["error"].startswith("exit 3")
    assert checks["hangs"]["status"] == "fail" and "timed out" in checks["hangs"]["error"]
    assert checks["passes"]["status"] == "pass" and checks["passes"]["numbers"] == {"tokens_per_s": 1.0}
    assert checks["too late"]["status"] == "fail" and "budget" in checks["too late"]["error"]
    assert stage.result()["status"] == "fail"

    report = {"started": "now", "commit": None, "device": "cuda", "seconds": 1.0, "stages": [stage.result()]}
    report["targets"] = gpu_check.targets(report)
    gpu_check.write_report(report, tmp_path)
    assert json.loads((tmp_path / "report.json").read_text())["stages"][0]["status"] == "fail"
    met = {t["target"].split(" (")[0]: t["met"] for t in report["targets"]}
    assert met["compiled training tokens/s"] is True and met["compiled MFU vs dense bf16 peak"] is None
    assert "| speed | fail | exits 3: fail |" in (tmp_path / "report.md").read_text()


def test_the_gpu_profiles_commands_are_valid_and_planned_to_fit_an_h100(tmp_path, monkeypatch, capsys):
    """What only the GPU run executes, checked here: its train flags resolve (no mistyped key) and the planner says
    each run fits one H100; its bench flags parse."""
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    import gpu_check_stages as stages
    from gpt2lab.cli import build_parser, main
    from tests.train_utils import write_dataset

    bundle = tmp_path / "bundle"
    write_dataset(bundle / "shakespeare")
    gpu = stages.profile_for(True)
    for preset in (stages.ADAMW, stages.MUON):
        flags = stages.train_flags(gpu, bundle, preset, gpu.steps)
        assert main(["train", *map(str, flags), "--dry-run", "--json", "--plan-device", "h100"]) == 0
        plan = json.loads(capsys.readouterr().out)
        assert plan["fits"] and plan["batch_size"] == 16 and plan["grad_accum"] == 1 and plan["max_steps"] == 200
    parser = build_parser()
    for batch in gpu.bench_batches:
        args = parser.parse_args(["bench", "train", *gpu.bench, "--batch-size", str(batch), "--compile"])
        assert (args.model, args.seq_len, args.dtypes, args.compile) == ("gpt2", 1024, ["bfloat16"], True)
    assert parser.parse_args(["bench", "generate", *gpu.generate]).dtypes == ["bfloat16"]


def test_a_timed_out_check_takes_its_child_processes_with_it(tmp_path, monkeypatch):
    """A hung torchrun must not keep its worker (and the GPU memory it holds) through the next checks."""
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    import gpu_check

    pid_file = tmp_path / "child.pid"
    # the child lets go of the pipes, as a daemon would: only the process group ties it to the check
    parent = ("import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', 'import time; "
              "time.sleep(60)'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
              f"open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(60)")
    with open(tmp_path / "logs.txt", "w") as log:
        stage = gpu_check.Stage("speed", log, dict(os.environ), budget=30)
        record = stage.check("hangs", lambda: stage.sh("hang", [sys.executable, "-c", parent], timeout=3))
    assert record["status"] == "fail" and "timed out" in record["error"]
    child = int(pid_file.read_text())
    try:
        for _ in range(100):  # SIGKILL is delivered at once; the zombie is reaped by init
            if not os.path.exists(f"/proc/{child}") or "zombie" in open(f"/proc/{child}/status").read():
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"the timed-out check's child {child} still runs")
    finally:
        if os.path.exists(f"/proc/{child}"):
            os.kill(child, signal.SIGKILL)


def test_a_second_try_runs_only_the_stages_named_after_the_environment(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    import gpu_check
    import gpu_check_stages

    ran = []

    def stage_fn(name):
        def fn(stage, bundle, scratch, profile):
            ran.append(name)
            stage.check("stand-in", lambda: {})
        return fn

    monkeypatch.setattr(gpu_check_stages, "STAGES", [(n, stage_fn(n)) for n, _ in gpu_check_stages.STAGES])
    bundle = tmp_path / "bundle"
    for name in ("gpt2.tiktoken", "shakespeare/manifest.json", "hellaswag_val.jsonl"):
        (bundle / name).parent.mkdir(parents=True, exist_ok=True)
        (bundle / name).write_text("")
    report = gpu_check.run(bundle, tmp_path / "out", ["memory"])
    assert ran == ["environment", "memory"]
    assert [(s["name"], s["status"]) for s in report["stages"]] == [
        ("environment", "pass"), ("cuda_tests", "skipped"), ("speed", "skipped"), ("end_to_end", "skipped"),
        ("memory", "pass")]
    with pytest.raises(SystemExit, match="no stage speeed"):
        gpu_check.run(bundle, tmp_path / "out", ["speeed"])
