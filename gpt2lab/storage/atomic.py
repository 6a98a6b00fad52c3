"""Writing files safely: atomically (temporary name, then rename), and with the OS's refusals in one line.

A rename within one filesystem is atomic, so a reader (or a later run after a crash) sees either the old
complete file or the new complete file, never a half-written one. Temporary names start with `.tmp-` so that
nothing looking for real files mistakes them for complete ones.

When the OS refuses a write (a full disk, a read-only filesystem, no permission, a path under /proc), the
writers here raise `OutputError`: a user error naming the path, the OS's reason and a fix, which the CLI prints
as one line. `writable_directory` checks an output directory up front, before a command starts its work.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path

from gpt2lab.errors import GPT2LabError

TMP_PREFIX = ".tmp-"


class OutputError(GPT2LabError, OSError):
    """The operating system refused to write where the user asked (disk full, read-only, permissions, ...).

    `errno`, `strerror` and `filename` are set as on any OSError; the message stays the one-line sentence."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


_FIXES = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space (you are over your disk quota) or write elsewhere",
    errno.EROFS: "choose a location on a writable filesystem",
    errno.EACCES: "choose a location you may write to, or change its permissions",
    errno.EPERM: "choose a location you may write to, or change its permissions",
    errno.EFBIG: "a limit on file size (`ulimit -f`, or a filesystem such as FAT32) refuses a file this large; "
                 "raise the limit or write elsewhere",
}
_DISK_NEARLY_FULL = 1 << 20  # bytes: below this, a writer's opaque failure is taken to be a full disk


def output_error(error: BaseException, path) -> OutputError | None:
    """The `OutputError` for `error`, raised while writing `path`, if the OS refused the write; else None.

    Writers implemented in C++/Rust do not raise OSError: safetensors says "... (os error 28)", and torch.save
    only "unexpected pos ..." (given a Python file, with the file's OSError as the exception's context). So the
    errno is also read from the exception chain and the message, and an opaque failure on a nearly full filesystem
    is reported as the full disk it almost certainly is. Call this before removing the partial file, which frees
    the space the check looks at.
    """
    if isinstance(error, GPT2LabError) and not isinstance(error, OutputError):
        return None  # already a user error with its own message
    code = _errno_in_chain(error)
    if code is None and not isinstance(error, OSError):
        found = re.search(r"os error (\d+)|\[Errno (\d+)\]", str(error))
        code = int(found.group(1) or found.group(2)) if found else (errno.ENOSPC if _nearly_full(path) else None)
    if code is None:
        return None
    # Named after `path`, what the user asked for: not a temporary file inside it, nor a parent mkdir tried.
    reason = os.strerror(code)
    refused = OutputError(f"cannot write {path}: {reason}; {_FIXES.get(code, 'check the path, or write elsewhere')}")
    refused.errno, refused.strerror, refused.filename = code, reason, str(path)
    return refused


def _errno_in_chain(error: BaseException) -> int | None:
    """The errno of the first OSError among `error` and the exceptions it was raised from or while handling."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno is not None:
            return error.errno
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _nearly_full(path) -> bool:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        stats = os.statvfs(path)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < _DISK_NEARLY_FULL


@contextlib.contextmanager
def reporting_refusals(path):
    """Turn the OS refusing a write inside the block into an `OutputError` naming `path`."""
    try:
        yield
    except Exception as e:
        refused = output_error(e, path)
        if refused is None:
            raise
        raise refused from None


def writable_directory(path) -> Path:
    """Create directory `path` if needed and prove a file can be written in it, so that an output the OS will
    refuse fails in one line before a command starts its (possibly long) work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} is a file, not a directory; choose another path")
    with reporting_refusals(path):
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=TMP_PREFIX) as probe:  # unnamed: nothing to clean up
            probe.write(b"\0")
            probe.flush()
            os.fsync(probe.fileno())  # a full disk refuses the byte here
    return path


def writable_file(path) -> Path:
    """`writable_directory` for the directory that will hold file `path`; a refusal names `path`."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a directory; give a file name")
    with reporting_refusals(path):
        writable_directory(path.parent)
    return path


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
    with reporting_refusals(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=path.parent)
    os.fchmod(fd, _default_mode(0o666))
    os.close(fd)
    tmp = Path(tmp)
    with _removed_on_failure(path, lambda: tmp.unlink(missing_ok=True)):
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)


@contextlib.contextmanager
def _removed_on_failure(path, remove):
    """On any exception (KeyboardInterrupt included) call `remove` (the temporary is discarded) and re-raise;
    an OS refusal becomes an `OutputError`, judged before `remove` frees the space a full disk is judged by."""
    try:
        yield
    except BaseException as e:
        refused = output_error(e, path) if isinstance(e, Exception) else None
        remove()
        if refused is not None:
            raise refused from None
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
    tmp = temporary_directory(path)
    with _removed_on_failure(path, lambda: shutil.rmtree(tmp, ignore_errors=True)):
        yield tmp
        publish_directory(tmp, path)


def temporary_directory(path) -> Path:
    """A fresh directory next to `path`, named so nothing takes it for a complete one (the first half of
    `atomic_directory`, for writers that are several processes: every rank writes into it, one publishes it)."""
    path = Path(path)
    with reporting_refusals(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=path.parent))
    tmp.chmod(_default_mode(0o777))
    return tmp


def publish_directory(tmp: Path, path) -> None:
    """Rename the finished temporary directory `tmp` to `path`, replacing what was there (the second half)."""
    path = Path(path)
    with reporting_refusals(path):
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
