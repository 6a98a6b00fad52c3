"""`gpt2lab eval` in real processes: torchrun's two ranks agree with one process, the JSON is the library's result,
a missing or undownloadable file is one line, and the loss of a run directory's newest checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from gpt2lab import load_model
from gpt2lab.eval import hellaswag, loss

from tests.conftest import REPO, run_cli
from tests.eval_utils import TEXT, _assert_one_line_error

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def test_torchrun_two_ranks_equal_single_process(tmp_path, tiny_model_dir, hellaswag_file):
    model = load_model(tiny_model_dir)
    single = hellaswag.evaluate(model, hellaswag.load_examples(hellaswag_file), batch_size=5)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gpt2lab",
           "eval", tiny_model_dir, "--task", "hellaswag", "--data", hellaswag_file, "--batch-size", "5",
           "--device", "cpu", "--json"]
    proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # only rank 0 prints
    distributed = json.loads(lines[0])
    assert (distributed["n"], distributed["correct"], distributed["correct_norm"]) == (
        single.n, single.correct, single.correct_norm)
    assert (distributed["acc"], distributed["acc_norm"]) == (single.acc, single.acc_norm)


def test_cli_json_matches_the_library(tiny_model_dir, hellaswag_file):
    proc = run_cli("eval", tiny_model_dir, "--data", hellaswag_file, "--limit", "6", "--device", "cpu", "--json",
                   env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["task"] == "hellaswag" and record["n"] == 6
    assert record["acc"] == record["correct"] / 6 and record["examples_per_s"] > 0
    model = load_model(tiny_model_dir)
    expected = hellaswag.evaluate(model, hellaswag.load_examples(hellaswag_file, limit=6))
    assert (record["correct"], record["correct_norm"]) == (expected.correct, expected.correct_norm)


def test_missing_file_gives_one_line_error(tmp_path):
    proc = run_cli("eval", "gpt2", "--data", tmp_path / "nowhere.jsonl", env=ONE_THREAD)
    _assert_one_line_error(proc, "nowhere.jsonl", "does not exist")


def test_offline_without_data_says_how_to_get_the_file(tmp_path):
    # An empty cache, and every HTTPS connection sent to a closed local port: offline, whatever the machine.
    offline = {"GPT2LAB_CACHE": str(tmp_path / "cache"), "https_proxy": "http://127.0.0.1:9",
               "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": "", **ONE_THREAD}
    proc = run_cli("eval", "gpt2", "--task", "hellaswag", env=offline)
    _assert_one_line_error(proc, "HellaSwag cannot be downloaded", hellaswag.VAL_URL, "--data")
    assert not (tmp_path / "cache" / "hellaswag_val.jsonl").exists()


def test_cli_loss_on_a_text_file(tmp_path, tiny_model_dir):
    path = tmp_path / "tale.txt"
    path.write_text(TEXT * 3)  # longer than the tiny model's 64 positions: several windows
    run = tmp_path / "run"  # a training run directory: MODEL resolves to its newest checkpoint
    shutil.copytree(tiny_model_dir, run / "checkpoints" / "step_00000010")
    proc = run_cli("eval", run, "--task", "loss", "--data", path, "--stride", "32", "--dtype", "float32",
                   "--json", env={"OMP_NUM_THREADS": "1"})  # float32 as the library call below (auto: bf16 if native)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["dtype"] == "float32"
    expected = loss.evaluate_loss(load_model(tiny_model_dir), loss.load_streams(path), stride=32)
    assert record["task"] == "loss" and record["tokens"] == expected.tokens == len(loss.text_file_tokens(path)) - 1
    assert record["loss"] == pytest.approx(expected.loss, rel=1e-6)
