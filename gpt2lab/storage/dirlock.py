"""DirectoryLock: one process at a time owns an output directory (a training run, a prepared dataset).

Two `gpt2lab train --out runs/x` started by accident (a second terminal, a re-submitted cluster job) would
otherwise both append to metrics.jsonl and overwrite each other's checkpoints. The lock is an OS advisory lock
(`flock`) on DIR/.gpt2lab.lock, held for the owner's whole life: the kernel releases it when the process ends,
however it ends (kill -9 included), so it can never go stale the way a pid file does, and `--resume` after a
crash needs no clean-up. The file itself stays (deleting a lock file races with a process opening it); it
records who holds the lock (pid, host, command, start time) so that the refusal can say who to wait for.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from gpt2lab.storage.atomic import reporting_refusals
from gpt2lab.errors import GPT2LabError

LOCK_FILE = ".gpt2lab.lock"


class DirectoryBusyError(GPT2LabError, BlockingIOError):
    """Another process holds the directory's lock."""


class DirectoryLock:
    def __init__(self, directory, what: str = "gpt2lab"):
        self.directory, self.what = Path(directory), what
        self.created = False  # whether acquire() made the directory (so a failed start can remove it)
        self._fd: int | None = None

    def acquire(self) -> DirectoryLock:
        """Create the directory if needed and take its lock, or raise `DirectoryBusyError` naming the holder."""
        import fcntl

        if self.directory.exists() and not self.directory.is_dir():
            raise GPT2LabError(f"{self.directory} is a file, not a directory; choose another path")
        self.created = not self.directory.exists()
        path = self.directory / LOCK_FILE
        with reporting_refusals(self.directory):  # a read-only or full disk fails here, before any work
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read_holder(fd))
            os.close(fd)
            raise DirectoryBusyError(
                f"{self.directory} is in use by {holder}; wait for it to finish or stop it, or choose another "
                f"directory") from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        try:
            with reporting_refusals(self.directory):
                _write_holder(fd, self.what)
        except BaseException:
            self.release()
            raise
        return self

    def release(self, remove_if_unused: bool = False) -> None:
        """Give the lock up. With `remove_if_unused`, a directory that acquire() created and that holds nothing but
        the lock file is removed (a command that failed before writing anything leaves nothing behind)."""
        if self._fd is None:
            return
        if remove_if_unused and self.created:
            try:
                if [p.name for p in self.directory.iterdir()] == [LOCK_FILE]:
                    (self.directory / LOCK_FILE).unlink()  # still locked: nobody else can have taken it
                    self.directory.rmdir()
            except OSError:
                pass  # something appeared in the meantime: leave the directory as it is
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.release(remove_if_unused=exc_type is not None)
        return False


def _write_holder(fd: int, what: str) -> None:
    record = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300],
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}  # the holder has not written its record yet (it just took the lock)


def _describe(holder: dict) -> str:
    if "pid" not in holder:
        return "another process"
    what = holder.get("what") or "process"
    since = f", running since {holder['since']}" if holder.get("since") else ""
    return f"{what} (pid {holder['pid']} on host {holder.get('host', '?')}{since})"
