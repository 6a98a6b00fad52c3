"""gpt2lab.data.prepare: exact token counts, lossless shards, splits, a token budget, reruns, and a disk that fills
up (the shards finished before it are resumed from, unless they changed)."""

import errno
from pathlib import Path

import numpy as np
import pytest

from gpt2lab import get_tokenizer
from gpt2lab.data import DataError, PrepareConfig, TokenLoader, prepare, read_manifest, split_tokens
from gpt2lab.data.shards import ShardWriter

from tests.data_utils import TEXTS, documents_of, quiet, write_txt_corpus


def test_token_counts_and_lossless_round_trip(tmp_path):
    corpus = write_txt_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    manifest = prepare(PrepareConfig([str(corpus)], str(out), shard_size=40, val_docs=2, progress=False), log=quiet)
    tok = get_tokenizer()
    expected = {"val": TEXTS[:2], "train": TEXTS[2:]}  # --val-docs 2: the first two documents
    for split, texts in expected.items():
        shards = manifest["splits"][split]
        assert sum(s["tokens"] for s in shards) == sum(len(tok.encode(t)) + 1 for t in texts)
        assert sum(s["documents"] for s in shards) == len(texts)
        assert documents_of(out, split) == texts
        shard_tokens = np.concatenate([np.asarray(m) for m in split_tokens(out, split)]).tolist()
        assert shard_tokens == [t for text in texts for t in [tok.eot_token, *tok.encode(text)]]
    assert len(manifest["splits"]["train"]) > 2  # tiny shard size: several shards
    assert read_manifest(out) == manifest
    assert not list(out.glob(".tmp-*")) and not (out / "prepare-state.json").exists()


def test_val_fraction_routes_whole_documents_deterministically(tmp_path):
    texts = [f"document number {i} " * (i + 1) for i in range(20)]
    corpus = write_txt_corpus(tmp_path / "c", texts)
    prepare(PrepareConfig([str(corpus)], str(tmp_path / "o"), val_fraction=0.25, progress=False), log=quiet)
    assert documents_of(tmp_path / "o", "val") == [texts[i] for i in (3, 7, 11, 15, 19)]
    assert len(documents_of(tmp_path / "o", "train")) == 15


def test_max_tokens_takes_a_prefix(tmp_path):
    corpus = write_txt_corpus(tmp_path / "c")
    prepare(PrepareConfig([str(corpus)], str(tmp_path / "o"), val_docs=0, max_tokens=20, progress=False), quiet)
    tok = get_tokenizer()
    docs = documents_of(tmp_path / "o", "train")
    assert docs == TEXTS[:len(docs)] and sum(len(tok.encode(d)) + 1 for d in docs) >= 20
    assert sum(len(tok.encode(d)) + 1 for d in docs[:-1]) < 20


def test_rerun_complete_different_and_overwrite(tmp_path):
    corpus = write_txt_corpus(tmp_path / "c")
    out = tmp_path / "o"
    config = PrepareConfig([str(corpus)], str(out), val_docs=1, progress=False)
    first = prepare(config, log=quiet)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    logs = []
    assert prepare(config, log=logs.append) == first
    assert "already holds this dataset" in logs[0] and (out / "manifest.json").stat().st_mtime_ns == stamp
    other = PrepareConfig([str(corpus)], str(out), val_docs=2, progress=False)
    with pytest.raises(DataError, match="different dataset"):
        prepare(other, log=quiet)
    assert read_manifest(out) == first  # untouched
    other.overwrite = True
    assert prepare(other, log=quiet)["args"]["val_docs"] == 2


class FullDisk:
    """A shard file on a disk with `room` bytes left: the write that does not fit fails with ENOSPC."""

    def __init__(self, file, budget):
        self.file, self.budget = file, budget

    def write(self, data):
        if len(data) > self.budget["room"]:
            self.file.write(data[:self.budget["room"]])
            raise OSError(errno.ENOSPC, "No space left on device")
        self.budget["room"] -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)


def prepare_until_the_disk_fills(tmp_path, monkeypatch):
    """A prepare whose disk fills up after 300 bytes of shards; returns its config, with the disk restored."""
    corpus = write_txt_corpus(tmp_path / "c")
    real_open = ShardWriter._open
    budget = {"room": 300}

    def open_on_small_disk(self):
        real_open(self)
        self._file = FullDisk(self._file, budget)

    monkeypatch.setattr(ShardWriter, "_open", open_on_small_disk)
    config = PrepareConfig([str(corpus)], str(tmp_path / "o"), shard_size=30, val_docs=0, progress=False)
    with pytest.raises(DataError, match="disk full"):
        prepare(config, log=quiet)
    monkeypatch.setattr(ShardWriter, "_open", real_open)
    return config


def test_disk_full_removes_the_temporary_shard_and_a_rerun_resumes(tmp_path, monkeypatch):
    config = prepare_until_the_disk_fills(tmp_path, monkeypatch)
    out = Path(config.out)
    assert not list(out.glob(".tmp-*"))
    assert list(out.glob("train_*.bin"))  # the shards finished before the disk filled are kept...
    with pytest.raises(DataError, match="unfinished"):
        TokenLoader(out, batch_size=1, seq_len=4)  # ...but nothing is a dataset yet
    logs = []
    prepare(config, log=logs.append)
    assert logs[0].startswith("resuming")
    assert documents_of(out, "train") == TEXTS


def test_resume_does_not_trust_a_finished_shard_that_changed(tmp_path, monkeypatch):
    """A shard damaged after an interrupted prepare (same size, other bytes) is caught by its sha256: the rerun
    starts over and gives what an uninterrupted prepare gives."""
    config = prepare_until_the_disk_fills(tmp_path, monkeypatch)
    out = Path(config.out)
    first = out / "train_000000.bin"
    data = bytearray(first.read_bytes())
    data[2:4] = bytes(data[4:6])  # the second token replaced by the third: same size
    first.write_bytes(bytes(data))
    logs = []
    manifest = prepare(config, log=logs.append)
    assert not any(line.startswith("resuming") for line in logs)
    assert documents_of(out, "train") == TEXTS
    fresh = prepare(PrepareConfig(config.sources, str(tmp_path / "fresh"), shard_size=30, val_docs=0,
                                  progress=False), log=quiet)
    assert manifest["splits"] == fresh["splits"]
