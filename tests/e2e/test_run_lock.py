"""One process per output directory: a second `train` or `prepare` into a directory in use is refused before it
writes anything, and the lock dies with its holder (kill -9 included), so nothing needs cleaning up."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from gpt2lab.storage.dirlock import LOCK_FILE, DirectoryBusyError, DirectoryLock

from tests.conftest import REPO, run_cli
from tests.train_utils import cli_flags, write_dataset

HOLD = """
import sys, time
from gpt2lab.storage.dirlock import DirectoryLock
DirectoryLock(sys.argv[1], what="test holder").acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_lock_dies_with_a_killed_holder(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DirectoryBusyError, match=f"pid {holder.pid}"):
            DirectoryLock(run).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    DirectoryLock(run).acquire().release()  # no stale lock: the kernel released it with the process


def test_train_into_a_run_in_use_is_refused_before_writing(tmp_path):
    data = write_dataset(tmp_path / "data")
    run = tmp_path / "run"
    with DirectoryLock(run, what="gpt2lab train"):
        result = run_cli("train", "--out", run, *cli_flags(data, schedule__max_steps=2))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "is in use by gpt2lab train" in result.stderr
    assert f"pid {os.getpid()}" in result.stderr
    assert [p.name for p in run.iterdir()] == [LOCK_FILE]  # no config, no metrics: nothing was written


def test_prepare_into_a_directory_in_use_is_refused(tmp_path):
    (tmp_path / "doc.txt").write_text("To be, or not to be, that is the question.\n" * 20)
    out = tmp_path / "data"
    with DirectoryLock(out, what="gpt2lab prepare"):
        result = run_cli("prepare", tmp_path / "doc.txt", "--out", out, "--val-docs", "0", "--no-progress")
    assert result.returncode == 2 and "is in use by gpt2lab prepare" in result.stderr
    assert [p.name for p in out.iterdir()] == [LOCK_FILE]
    again = run_cli("prepare", tmp_path / "doc.txt", "--out", out, "--val-docs", "0", "--no-progress")
    assert again.returncode == 0, again.stderr  # the holder is gone: the same command now works


def test_two_real_trainers_on_one_run(tmp_path):
    """The accident itself: the second launch fails at once, the first runs to the end undisturbed."""
    data = write_dataset(tmp_path / "data")
    run = tmp_path / "run"
    flags = [str(f) for f in cli_flags(data, schedule__max_steps=40, data__total_batch_tokens=256)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, "-m", "gpt2lab", "train", "--out", str(run), "--no-progress", *flags],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    second = run_cli("train", "--out", run, "--no-progress", *flags)
    out, err = first.communicate(timeout=300)
    assert second.returncode == 2 and f"pid {first.pid}" in second.stderr, second.stderr
    assert first.returncode == 0, err
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == list(range(1, 41))  # every step logged once, in order: one writer
