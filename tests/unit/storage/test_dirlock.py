"""DirectoryLock (gpt2lab/storage/dirlock.py) in one process: a second lock is refused naming the holder, and a start
that failed leaves no directory. (Across processes, kill -9 included: tests/e2e/test_run_lock.py.)"""

import os
import socket

import pytest

from gpt2lab.storage.dirlock import LOCK_FILE, DirectoryBusyError, DirectoryLock


def test_second_lock_is_refused_and_names_the_holder(tmp_path):
    run = tmp_path / "run"
    with DirectoryLock(run, what="gpt2lab train"):
        with pytest.raises(DirectoryBusyError) as refused:
            DirectoryLock(run).acquire()
        message = str(refused.value)
        assert str(run) in message and f"pid {os.getpid()}" in message and socket.gethostname() in message
        assert "gpt2lab train" in message
    DirectoryLock(run).acquire().release()  # released on exit: free again


def test_failed_start_leaves_no_directory_but_a_used_one_keeps_its_lock_file(tmp_path):
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError), DirectoryLock(fresh):
        raise RuntimeError("the command failed before writing anything")
    assert not fresh.exists()
    used = tmp_path / "used"
    with DirectoryLock(used):
        (used / "metrics.jsonl").write_text("{}\n")
    assert sorted(p.name for p in used.iterdir()) == [LOCK_FILE, "metrics.jsonl"]


def test_the_holder_record_replaces_a_longer_one_left_by_an_earlier_holder(tmp_path):
    """The lock file stays between holders: a new record shorter than the last one must not leave its tail behind
    (the refusal could then not read who holds the lock)."""
    import json

    run = tmp_path / "run"
    run.mkdir()
    earlier = {"pid": 1, "host": "elsewhere", "what": "gpt2lab prepare", "command": "x" * 3000, "since": "then"}
    (run / LOCK_FILE).write_text(json.dumps(earlier) + "\n")
    with DirectoryLock(run, what="gpt2lab train"):
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
        with pytest.raises(DirectoryBusyError, match=f"gpt2lab train \\(pid {os.getpid()} on host"):
            DirectoryLock(run).acquire()
