"""`gpt2lab prepare` as a user runs it: bad input in a real process is one clear line and exit code 2; a killed run
leaves no dataset, and the rerun resumes to the same shards."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from gpt2lab.cli import main
from gpt2lab.data import DataError, TokenLoader, read_manifest

from tests.conftest import REPO, run_cli


def one_line_error(returncode, stderr, *needles):
    assert returncode == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpt2lab prepare: error:"), stderr
    for needle in needles:
        assert needle in lines[0]


def test_bad_input_in_a_real_process(tmp_path):
    result = run_cli("prepare", str(tmp_path / "nothing-*.txt"), "--out", tmp_path / "o")
    one_line_error(result.returncode, result.stderr, "no .txt")
    assert not (tmp_path / "o").exists()


def big_corpus(folder, files=24, words=8_000):
    folder.mkdir()
    for i in range(files):
        (folder / f"part{i:03d}.txt").write_text(" ".join(f"w{i}x{j % 997}" for j in range(words)))
    return folder


def test_killed_prepare_leaves_no_dataset_and_a_rerun_completes(tmp_path, capsys):
    corpus = big_corpus(tmp_path / "corpus")
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    args = [str(corpus), "--shard-size", "20000", "--val-docs", "3", "--no-progress", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "gpt2lab", "prepare", *args, "--out", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # kill it while a shard is being written
        if len(list(out.glob("train_*.bin"))) >= 3 and list(out.glob(".tmp-*")):
            break
        time.sleep(0.002)
    assert proc.poll() is None, "prepare finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    with pytest.raises(DataError, match="unfinished"):
        TokenLoader(out, batch_size=1, seq_len=8)
    with pytest.raises(DataError):
        read_manifest(out)
    resumed = run_cli("prepare", *args, "--out", out)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    assert main(["prepare", *args, "--out", str(fresh)]) == 0
    killed_then_resumed, uninterrupted = read_manifest(out), read_manifest(fresh)
    assert killed_then_resumed["splits"] == uninterrupted["splits"]  # same shards, same hashes
    assert not list(out.glob(".tmp-*"))
    assert main(["prepare", *args, "--out", str(out)]) == 0
    assert "already holds this dataset" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text()) == killed_then_resumed
