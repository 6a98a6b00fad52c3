"""Atomic writes (gpt2lab/storage/atomic.py): complete or absent, never half-written, with the permissions a plain
write would give; and the OS refusals behind opaque writer failures recognised, their temporaries removed."""

import errno
import stat

import pytest

from gpt2lab.errors import GPT2LabError
from gpt2lab.storage import atomic
from gpt2lab.storage.atomic import OutputError, atomic_directory, atomic_path, atomic_write_text, output_error


@pytest.fixture
def umask_022(monkeypatch):
    """The umask as atomic.py read it at import (the process's own may differ on a test machine)."""
    monkeypatch.setattr(atomic, "_UMASK", 0o022)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_file_and_directory_get_umask_permissions_not_private_ones(tmp_path, umask_022):
    atomic_write_text(tmp_path / "a.txt", "hello")
    with atomic_directory(tmp_path / "ckpt") as tmp:
        (tmp / "x").write_text("x")
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert mode(tmp_path / "a.txt") == 0o644  # mkstemp alone would give 0o600
    assert mode(tmp_path / "ckpt") == 0o755  # mkdtemp alone would give 0o700


def test_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_interrupted_directory_leaves_the_old_one(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "weights").write_text("v2-partial")
            raise RuntimeError("disk full")
    assert (target / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_opaque_writer_failures_are_recognised(tmp_path, monkeypatch):
    """torch.save and safetensors (C++ / Rust) do not raise OSError on a full disk; their failures still read as
    the OS refusal they are, and failures that are not refusals stay what they were."""
    rust = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    refused = output_error(rust, tmp_path / "model.safetensors")
    assert isinstance(refused, OutputError) and isinstance(refused, GPT2LabError) and refused.errno == errno.ENOSPC
    assert str(refused).startswith(f"cannot write {tmp_path / 'model.safetensors'}: No space left on device")
    opaque = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    assert output_error(opaque, tmp_path / "x.pt") is None  # plenty of space here: a bug, not a refusal
    monkeypatch.setattr("gpt2lab.storage.atomic._nearly_full", lambda path: True)
    assert output_error(opaque, tmp_path / "x.pt").errno == errno.ENOSPC
    assert output_error(GPT2LabError("already a user error"), tmp_path) is None


def test_the_os_refusal_is_found_in_the_exception_chain(tmp_path):
    """torch.save writing to a Python file reports "unexpected pos", raised while handling the file's OSError."""
    try:
        try:
            raise OSError(errno.EFBIG, "File too large")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    except RuntimeError as e:
        refused = output_error(e, tmp_path / "training_state.pt")
    assert refused.errno == errno.EFBIG
    assert str(refused).startswith(f"cannot write {tmp_path / 'training_state.pt'}: File too large; ")
    assert "ulimit -f" in str(refused)


def test_atomic_writers_remove_their_temporaries_on_refusal(tmp_path, monkeypatch):
    monkeypatch.setattr("gpt2lab.storage.atomic._nearly_full", lambda path: True)
    with pytest.raises(OutputError), atomic_path(tmp_path / "file.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("opaque writer failure")
    with pytest.raises(OutputError), atomic_directory(tmp_path / "ckpt") as tmp:
        (tmp / "weights").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []
