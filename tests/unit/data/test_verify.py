"""Shards against the sha256 of their manifest (gpt2lab/data/verify.py): a flipped bit or a missing shard is named,
a good dataset passes hashing each shard once, and the processes of a run share the hashing."""

import hashlib

import pytest

from gpt2lab.data import DataError, read_manifest
from gpt2lab.data import verify
from gpt2lab.runtime import distributed

from tests.train_utils import write_dataset


def test_a_flipped_bit_or_a_missing_shard_is_named(tmp_path):
    data = write_dataset(tmp_path / "d")
    manifest = read_manifest(data)
    logs = []
    verify.verify_shards(data, manifest, log=logs.append)  # a good dataset passes, and says what it cost
    assert len(logs) == 1 and "verified" in logs[0] and "data.verify = false" in logs[0]
    shard = data / "val_000000.bin"
    raw = bytearray(shard.read_bytes())
    raw[101] ^= 0x04  # one bit, same size: nothing but the hash can tell
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"shard .*val_000000\.bin does not match its sha256"):
        verify.verify_shards(data, manifest)
    shard.unlink()
    with pytest.raises(DataError, match=r"val_000000\.bin \(missing\)"):
        verify.verify_shards(data, manifest)


def test_each_shard_is_hashed_once_and_ranks_share_the_work(tmp_path, monkeypatch):
    data = write_dataset(tmp_path / "d")
    hashed = []
    real = verify.file_sha256
    monkeypatch.setattr(verify, "file_sha256", lambda path: hashed.append(path.name) or real(path))
    verify.verify_shards(data, read_manifest(data), log=lambda line: None)
    assert sorted(hashed) == ["train_000000.bin", "val_000000.bin"]

    # rank 1 of 2 hashes every other shard, and learns of rank 0's damaged one through the gather
    hashed.clear()
    monkeypatch.setattr(distributed, "rank_and_world", lambda: (1, 2))
    monkeypatch.setattr(distributed, "all_gather_object", lambda obj: [[str(data / "train_000000.bin")], obj])
    with pytest.raises(DataError, match=r"train_000000\.bin does not match"):
        verify.verify_shards(data, read_manifest(data))
    assert hashed == ["val_000000.bin"]


def test_file_sha256_is_the_whole_files_hash(tmp_path, monkeypatch):
    monkeypatch.setattr(verify, "_CHUNK", 7)  # several reads, the last one short
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 3)
    assert verify.file_sha256(path) == (hashlib.sha256(path.read_bytes()).hexdigest(), 768)
