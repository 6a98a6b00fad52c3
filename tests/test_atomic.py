"""Atomic writes: complete or absent, never half-written, and with the permissions a plain write would give."""

import stat

import pytest

from gpt2lab.storage import atomic
from gpt2lab.storage.atomic import atomic_directory, atomic_path, atomic_write_text


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
