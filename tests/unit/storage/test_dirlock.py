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
