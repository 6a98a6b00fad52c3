"""The verified fetcher (gpt2lab/storage/cache.py), offline: pip's download is replaced by a local sdist."""

import hashlib
import io
import tarfile

import pytest

from gpt2lab.storage import cache
from gpt2lab.storage.cache import ChecksumMismatch, FetchError, fetch_verified

PAYLOAD = b"ranks\n"
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def _sdist() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("pkg-1.0/assets/data.txt")
        info.size = len(PAYLOAD)
        tar.addfile(info, io.BytesIO(PAYLOAD))
    return buffer.getvalue()


SDIST = _sdist()  # built once: gzip stamps the time, so each build would hash differently


@pytest.fixture
def fake_index(monkeypatch):
    """pip_download_sdist writes pkg-1.0.tar.gz (holding pkg-1.0/assets/data.txt); returns the requirements asked."""
    downloads = []

    def download(requirement, directory):
        downloads.append(requirement)
        archive = directory / "pkg-1.0.tar.gz"
        archive.write_bytes(SDIST)
        return archive

    monkeypatch.setattr(cache, "pip_download_sdist", download)
    return downloads


def test_member_is_verified_cached_and_not_fetched_again(tmp_path, fake_index):
    destination = tmp_path / "cache" / "data.txt"
    assert fetch_verified("pkg==1.0", SHA, destination, member="assets/data.txt") == destination
    assert destination.read_bytes() == PAYLOAD
    fetch_verified("pkg==1.0", SHA, destination, member="assets/data.txt")
    assert fake_index == ["pkg==1.0"]  # the second call found it in the cache


def test_whole_sdist_and_a_corrupt_cached_copy(tmp_path, fake_index):
    destination = tmp_path / "pkg-1.0.tar.gz"
    destination.write_bytes(b"truncated")
    with pytest.raises(ChecksumMismatch, match="pkg==1.0 has sha256"):
        fetch_verified("pkg==1.0", "0" * 64, destination)
    assert destination.read_bytes() == b"truncated"  # nothing written
    fetch_verified("pkg==1.0", hashlib.sha256(SDIST).hexdigest(), destination)
    assert destination.read_bytes() == SDIST and fake_index == ["pkg==1.0"] * 2


def test_missing_member(tmp_path, fake_index):
    with pytest.raises(FetchError, match="pkg==1.0 has no assets/other.txt"):
        fetch_verified("pkg==1.0", SHA, tmp_path / "other.txt", member="assets/other.txt")
    assert not (tmp_path / "other.txt").exists()
