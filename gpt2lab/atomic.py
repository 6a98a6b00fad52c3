"""Atomic file and directory writes: write under a temporary name, then rename.

A rename within one filesystem is atomic, so a reader (or a later run after a crash) sees either the old
complete file or the new complete file, never a half-written one. Temporary names start with `.tmp-` so that
nothing looking for real files mistakes them for complete ones.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

TMP_PREFIX = ".tmp-"


def _read_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)  # reading the umask means setting it: put it straight back
    return umask


# Read once, at import, before any worker thread exists: while the umask is briefly 0 above, a file another thread
# created would get 0o666. A process's umask is set by its launcher and practically never changes afterwards.
_UMASK = _read_umask()


def _default_mode(kind: int) -> int:
    """The permissions a plain open()/mkdir() would give (0o666 / 0o777 minus the umask).

    mkstemp/mkdtemp create private (0600/0700) files, and a rename keeps them: without this every checkpoint
    and shard would be unreadable to the other users of a shared machine.
    """
    return kind & ~_UMASK


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; on success it is fsynced and renamed to `path`.

    On any exception (KeyboardInterrupt included) the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=path.parent)
    os.fchmod(fd, _default_mode(0o666))
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_directory(path):
    """Yield a fresh temporary directory next to `path`; on success it replaces `path` as a whole.

    Used for checkpoints: a directory either exists complete or does not exist at all.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=path.parent))
    tmp.chmod(_default_mode(0o777))
    try:
        yield tmp
        if path.exists():
            # Move the old one aside first: a directory cannot be replaced by rename in one step.
            old = path.with_name(f"{TMP_PREFIX}{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
