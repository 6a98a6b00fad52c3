"""FSDP2 on this machine's CPU (gloo, torchrun): two sharded processes train what DDP and one process with
accumulation train, to float rounding (AdamW and Muon; AdamW also with activation checkpointing); a run killed at
any moment, also mid-checkpoint, resumes bit-identically; it resumes across strategies and process counts; its
checkpoints export to a plain HF model that transformers reads; bad input is one line."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, run_cli
from tests.train_utils import cli_flags, losses, write_dataset

STEPS, EVERY = 12, 3


def torchrun(processes: int, *args, script=None, env=None, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    target = [str(script)] if script else ["-m", "gpt2lab"]
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={processes}", *target, "train", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def trained(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def close(a: dict, b: dict, tolerance=1e-5) -> bool:
    return sorted(a) == sorted(b) and max(abs(a[s] - b[s]) for s in a) <= tolerance


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The data, the flags of a 12-step run (2 sequences of 16 tokens per process and micro-step, 128 tokens per
    step: 2 micro-steps on 2 processes, 4 on one, 1 on four), and that run trained by 2 FSDP processes,
    checkpoints every 3 steps, all kept."""
    root = tmp_path_factory.mktemp("fsdp")
    data = write_dataset(root / "data", train_tokens=40_000)
    hellaswag = root / "hellaswag.jsonl"  # 3 examples: the two ranks score 2 and 1, in equal forward passes
    hellaswag.write_text("".join(json.dumps({"ctx": f"A man {i}", "endings": ["runs.", "sits.", "eats.", "is."],
                                             "label": i}) + "\n" for i in range(3)))
    flags = cli_flags(data, schedule__max_steps=STEPS, data__batch_size=2, data__total_batch_tokens=128,
                      checkpoint__every=EVERY, checkpoint__keep=10, eval__sample_every=6, eval__sample_count=2,
                      eval__sample_tokens=4, eval__hellaswag_every=6, eval__hellaswag_data=hellaswag)
    result = trained(torchrun(2, "--out", root / "fsdp", *flags, "--set", "parallel.strategy=fsdp"))
    metrics = [json.loads(line) for line in (root / "fsdp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics if "hellaswag_acc" in r] == [6, 12] and "(n=3)" in result.stdout
    assert (root / "fsdp" / "samples.txt").read_text().count("--- step") == 4  # sampled (rank 0 writes them)
    return root, flags


# ---------------------------------------------------------------------------------------------- the same steps


# issue 25's Muon options on the sharded path: NorMuon's column statistics are all-reduced over the row shards
SPEEDRUN = dict(optim__muon_ns_coefficients="polar_express", optim__muon_normuon="true", optim__cautious_wd="true",
                optim__muon_weight_decay=0.1, optim__muon_momentum_warmup_steps=5, optim__adamw_cautious_wd="true")


@pytest.mark.parametrize("optimizer", ["adamw", "muon", "muon-speedrun"])
def test_fsdp_trains_the_steps_of_ddp_and_of_one_process_with_accumulation(tmp_path, optimizer):
    data = write_dataset(tmp_path / "data", train_tokens=40_000)
    extra = dict(optim__name="muon", optim__muon_ns_dtype="fp32") if optimizer != "adamw" else {}
    extra.update(SPEEDRUN if optimizer == "muon-speedrun" else {})
    flags = cli_flags(data, schedule__max_steps=10, data__batch_size=2, **extra)
    trained(run_cli("train", "--out", tmp_path / "one", *flags))  # 2 micro-steps
    runs = {"ddp": ["parallel.strategy=ddp"], "fsdp": ["parallel.strategy=fsdp"],
            "fsdp+checkpointing": ["parallel.strategy=fsdp", "runtime.activation_checkpointing=true"]}
    if optimizer != "adamw":
        del runs["ddp"]  # DDP's Muon against one process: tests/e2e/test_train_ddp.py
        del runs["fsdp+checkpointing"]  # recomputing activations changes no number: the AdamW case shows it
    reference = losses(tmp_path / "one")
    assert len(reference) == 10
    for name, sets in runs.items():
        trained(torchrun(2, "--out", tmp_path / name, *flags, *[f for s in sets for f in ("--set", s)]))
        assert close(losses(tmp_path / name), reference), name


# ---------------------------------------------------------------------------------------------- kills


def test_a_kill_after_the_shards_are_written_leaves_no_checkpoint_and_resume_is_bit_identical(tmp_path, base):
    root, flags = base
    run = tmp_path / "killed"
    result = torchrun(2, "--out", run, *flags, "--set", "parallel.strategy=fsdp", script=REPO / "tests/fsdp_faults.py",
                      env={"KILL_AT_STEP": "6"})
    assert result.returncode != 0
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "step_00000003" in checkpoints and any(name.startswith(".tmp-step_00000006") for name in checkpoints)
    assert not (run / "checkpoints" / "step_00000006").exists()  # the half-written one is never complete
    trained(torchrun(2, "--out", run, "--resume"))
    assert losses(run) == losses(root / "fsdp")  # every step, bit for bit
    assert not any(p.name.startswith(".tmp-") for p in (run / "checkpoints").iterdir())  # cleaned up


def kill_processes_naming(path: Path) -> None:
    """SIGKILL every process whose command line names `path` (a run directory only this test uses)."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(path) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):  # it ended meanwhile
            pass


def test_kills_at_random_moments_then_resume_give_the_same_losses(tmp_path, base):
    root, flags = base
    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gpt2lab",
               "train", "--out", str(run), *flags, "--set", "parallel.strategy=fsdp"]
    moments = random.Random(0).sample([x / 2 for x in range(6, 20)], 2)  # seconds after the start
    for i, moment in enumerate(moments):
        process = subprocess.Popen(command + (["--resume"] if i else []), env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(moment)
        os.killpg(process.pid, signal.SIGKILL)  # torchrun, wherever it was
        kill_processes_naming(run)  # and both workers (torchrun starts each in a session of its own)
        process.wait()
    # the same command again, as a user would (a kill before the run's config was written leaves nothing to read)
    trained(torchrun(2, "--out", run, *flags, "--set", "parallel.strategy=fsdp", "--resume"))
    assert losses(run) == losses(root / "fsdp")


# ---------------------------------------------------------------------------------------------- other layouts


def resumable_copy(source, destination, keep_through: int):
    shutil.copytree(source, destination)
    for checkpoint in (destination / "checkpoints").iterdir():
        if int(checkpoint.name.split("_")[1]) > keep_through:
            shutil.rmtree(checkpoint)
    return destination


def test_an_fsdp_run_resumes_on_one_process_and_on_four(tmp_path, base):
    root, _ = base
    straight = losses(root / "fsdp")
    alone = resumable_copy(root / "fsdp", tmp_path / "alone", keep_through=6)
    trained(run_cli("train", "--out", alone, "--resume"))  # whole model, 2 micro-steps
    assert close(losses(alone), straight)
    four = resumable_copy(root / "fsdp", tmp_path / "four", keep_through=6)
    result = trained(torchrun(4, "--out", four, "--resume", timeout=600))
    assert "process count changed: 2 -> 4" in result.stdout
    assert close(losses(four), straight)


def test_a_ddp_run_resumes_under_fsdp(tmp_path, base):
    root, flags = base
    trained(torchrun(2, "--out", tmp_path / "ddp", *flags, "--set", "parallel.strategy=ddp"))
    resumed = resumable_copy(tmp_path / "ddp", tmp_path / "resumed", keep_through=6)
    trained(torchrun(2, "--out", resumed, "--resume", "--set", "parallel.strategy=fsdp"))
    assert close(losses(resumed), losses(tmp_path / "ddp"))
    assert (resumed / "checkpoints" / "step_00000009" / "sharded").is_dir()  # and it is sharded from then on


# ---------------------------------------------------------------------------------------------- export


def test_checkpoints_export_to_an_hf_model_that_transformers_reads_with_the_same_logits(tmp_path, base):
    from safetensors.torch import load_file
    from transformers import GPT2LMHeadModel

    from gpt2lab import load_model
    from gpt2lab.train import sharded_checkpoint

    root, _ = base
    checkpoints = root / "fsdp" / "checkpoints"
    assert not (checkpoints / "step_00000003" / "model.safetensors").exists()  # sharded only, until the end
    assert (checkpoints / f"step_{STEPS:08d}" / "model.safetensors").is_file()  # the final one has it
    result = run_cli("export", root / "fsdp", "--step", "3", "--out", tmp_path / "step3")
    assert result.returncode == 0, result.stderr
    ours = load_model(tmp_path / "step3")
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "step3").eval()
    tokens = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        assert torch.allclose(ours(tokens)[0], hf(tokens).logits, atol=1e-5)
    # the final checkpoint's HF weights are its sharded state, gathered: the same tensors
    sharded_checkpoint.export(checkpoints / f"step_{STEPS:08d}", tmp_path / "gathered")
    final = load_file(checkpoints / f"step_{STEPS:08d}" / "model.safetensors")
    gathered = load_file(tmp_path / "gathered" / "model.safetensors")
    assert final.keys() == gathered.keys() and all(torch.equal(final[k], gathered[k]) for k in final)
    assert run_cli("sample", root / "fsdp", "--max-new-tokens", "3", "--num-samples", "1").returncode == 0


def test_a_run_whose_newest_checkpoint_is_sharded_only_says_how_to_export_it(tmp_path, base):
    root, _ = base
    run = resumable_copy(root / "fsdp", tmp_path / "mid", keep_through=6)
    result = run_cli("sample", run, "--max-new-tokens", "3")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "step_00000006, is sharded (FSDP)" in result.stderr and "gpt2lab export" in result.stderr


# ---------------------------------------------------------------------------------------------- bad input


def one_line(result, *needles):
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in line, line


def test_a_sharded_checkpoint_missing_a_rank_s_file_is_skipped_or_refused(tmp_path, base):
    root, _ = base
    run = resumable_copy(root / "fsdp", tmp_path / "damaged", keep_through=9)
    (run / "checkpoints" / "step_00000009" / "sharded" / "__1_0.distcp").unlink()
    result = run_cli("train", "--out", run, "--resume")  # falls back to step 6, naming what it skipped
    assert result.returncode == 0, result.stderr
    assert "skipping damaged checkpoint" in result.stdout and "__1_0.distcp (one rank's part) is missing" in result.stdout
    assert close(losses(run), losses(root / "fsdp"))
    only = resumable_copy(root / "fsdp", tmp_path / "only", keep_through=3)
    (only / "checkpoints" / "step_00000003" / "sharded" / "__0_0.distcp").unlink()
    before = sorted(p.relative_to(only) for p in only.rglob("*"))
    one_line(run_cli("train", "--out", only, "--resume"), "every checkpoint of", "damaged", "__0_0.distcp")
    assert sorted(p.relative_to(only) for p in only.rglob("*")) == before  # nothing written, nothing removed


def test_bad_fsdp_requests_are_one_line(tmp_path, base):
    root, flags = base
    one_line(run_cli("train", "--out", tmp_path / "a", *flags, "--set", "parallel.strategy=zero3"),
             "parallel.strategy must be ddp, fsdp or auto")
    one_line(run_cli("train", "--out", tmp_path / "b", *flags, "--set", "parallel.strategy=fsdp",
                     "--set", "runtime.precision=fp16"), "fsdp does not take fp16")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    run = resumable_copy(root / "fsdp", tmp_path / "batch", keep_through=6)
    one_line(run_cli("train", "--out", run, "--resume", "--set", "data.total_batch_tokens=256"),
             "--resume cannot continue this run", "data.total_batch_tokens (128 -> 256)")
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == STEPS  # untouched
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000003", "step_00000006"]
