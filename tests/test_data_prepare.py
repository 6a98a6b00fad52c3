"""gpt2lab prepare: exact token counts, lossless shards, sources, splits, reruns, resume and failures."""

import errno
import json

from pathlib import Path

import numpy as np
import pytest

from gpt2lab import get_tokenizer
from gpt2lab.data import DataError, PrepareConfig, TokenLoader, prepare, read_manifest, split_tokens
from gpt2lab.data.shards import ShardWriter

TEXTS = [
    "First document.\nWith two lines.",
    "naïve café — 東京 🚀 Ωμέγα\n\ttabs  and  spaces",
    "A literal <|endoftext|> inside is ordinary text, not a boundary.",
    "short",
    "The quick brown fox jumps over the lazy dog. " * 20,
    "Last one, without a newline",
]


def quiet(*_):
    pass


def documents_of(data_dir, split):
    """The texts in a split's shards: split on EOT (each document starts with one)."""
    tok = get_tokenizer()
    docs = []
    for shard in split_tokens(data_dir, split):
        tokens = np.asarray(shard).tolist()
        assert tokens[0] == tok.eot_token  # a shard starts with a whole document
        bounds = [i for i, t in enumerate(tokens) if t == tok.eot_token] + [len(tokens)]
        docs += [tok.decode(tokens[a + 1:b]) for a, b in zip(bounds, bounds[1:])]
    return docs


def write_txt_corpus(folder, texts=TEXTS):
    folder.mkdir()
    for i, text in enumerate(texts):
        (folder / f"doc{i:02d}.txt").write_text(text, encoding="utf-8")
    return folder


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


def test_output_inside_the_source_folder_is_not_read_back(tmp_path):
    corpus = write_txt_corpus(tmp_path / "corpus")
    out = corpus / "data"
    config = PrepareConfig([str(corpus)], str(out), val_docs=0, progress=False)
    first = prepare(config, log=quiet)
    logs = []
    prepare(PrepareConfig([str(corpus)], str(corpus / "data2"), val_docs=0, progress=False), log=logs.append)
    assert documents_of(corpus / "data2", "train") == TEXTS  # data/manifest.json was not taken as a document
    assert not [line for line in logs if "skipped" in line]  # not even tried as one
    assert first["splits"]["train"][0]["sha256"] == read_manifest(corpus / "data2")["splits"]["train"][0]["sha256"]


def test_val_fraction_routes_whole_documents_deterministically(tmp_path):
    texts = [f"document number {i} " * (i + 1) for i in range(20)]
    corpus = write_txt_corpus(tmp_path / "c", texts)
    prepare(PrepareConfig([str(corpus)], str(tmp_path / "o"), val_fraction=0.25, progress=False), log=quiet)
    assert documents_of(tmp_path / "o", "val") == [texts[i] for i in (3, 7, 11, 15, 19)]
    assert len(documents_of(tmp_path / "o", "train")) == 15


def test_jsonl_json_parquet_sources_and_skipped_records(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.jsonl").write_text('{"text": "one"}\nnot json\n{"body": "no text field"}\n\n{"text": "two"}\n')
    (tmp_path / "b.json").write_text(json.dumps([{"content": "three"}, {"content": "four"}]))
    pq.write_table(pa.table({"content": ["five", "six"]}), tmp_path / "c.parquet")
    logs = []
    prepare(PrepareConfig([str(tmp_path / "a.jsonl")], str(tmp_path / "o1"), val_docs=0, progress=False), logs.append)
    assert documents_of(tmp_path / "o1", "train") == ["one", "two"]
    joined = "\n".join(logs)
    assert "a.jsonl:2" in joined and "a.jsonl:3" in joined  # line numbers of skipped records
    with pytest.raises(DataError, match=r"a\.jsonl:2"):
        prepare(PrepareConfig([str(tmp_path / "a.jsonl")], str(tmp_path / "o2"), strict=True, progress=False), quiet)
    assert not (tmp_path / "o2").exists()  # nothing left behind
    prepare(PrepareConfig([str(tmp_path / "b.json"), str(tmp_path / "c.parquet")], str(tmp_path / "o3"),
                          text_field="content", val_docs=0, progress=False), log=quiet)
    assert documents_of(tmp_path / "o3", "train") == ["three", "four", "five", "six"]


def test_hf_source_streams_through_datasets(tmp_path, monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, split=None, streaming=False):
        calls.append((name, config, split, streaming))
        return datasets.Dataset.from_dict({"text": ["alpha", "beta", "gamma"]}).to_iterable_dataset()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    config = PrepareConfig(["hf:someone/corpus:sample-1"], str(tmp_path / "o"), val_docs=1, progress=False)
    manifest = prepare(config, log=quiet)
    assert calls == [("someone/corpus", "sample-1", "train", True)]
    assert documents_of(tmp_path / "o", "val") == ["alpha"]
    assert documents_of(tmp_path / "o", "train") == ["beta", "gamma"]
    assert manifest["source"] == "hf:someone/corpus:sample-1"


def test_max_tokens_takes_a_prefix(tmp_path):
    corpus = write_txt_corpus(tmp_path / "c")
    prepare(PrepareConfig([str(corpus)], str(tmp_path / "o"), val_docs=0, max_tokens=20, progress=False), quiet)
    tok = get_tokenizer()
    docs = documents_of(tmp_path / "o", "train")
    assert docs == TEXTS[:len(docs)] and sum(len(tok.encode(d)) + 1 for d in docs) >= 20
    assert sum(len(tok.encode(d)) + 1 for d in docs[:-1]) < 20


def test_invalid_utf8_is_replaced_and_reported(tmp_path):
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "bad.txt").write_bytes(b"caf\xe9 ok \xff\xfe end")
    logs = []
    prepare(PrepareConfig([str(corpus)], str(tmp_path / "o"), val_docs=0, progress=False), logs.append)
    assert documents_of(tmp_path / "o", "train") == ["caf\ufffd ok \ufffd\ufffd end"]
    assert any("invalid UTF-8" in line and "3 bytes" in line and "bad.txt" in line for line in logs)


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


def test_manifest_describes_each_shard_exactly(tmp_path):
    """Per shard: sha256 of the file's bytes, its token count (2 bytes each), its documents (one EOT each)."""
    import hashlib

    corpus = write_txt_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    manifest = prepare(PrepareConfig([str(corpus)], str(out), shard_size=40, val_docs=2, progress=False), log=quiet)
    eot = get_tokenizer().eot_token
    shards = [s for split in ("train", "val") for s in manifest["splits"][split]]
    assert len(shards) > 3
    for shard in shards:
        data = (out / shard["file"]).read_bytes()
        assert shard["sha256"] == hashlib.sha256(data).hexdigest(), shard["file"]
        tokens = np.frombuffer(data, dtype="<u2")
        assert shard["tokens"] == len(tokens) and shard["documents"] == int((tokens == eot).sum()) > 0


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


def test_a_shard_has_its_final_name_only_once_complete(tmp_path, monkeypatch):
    """Watched after every write: each train_/val_ file in the output is a finished shard (the one being
    written is under a temporary name)."""
    corpus = write_txt_corpus(tmp_path / "c")
    out = tmp_path / "o"
    real_write = ShardWriter._write
    checked = []

    def write_and_look(self, documents):
        real_write(self, documents)
        finished = {s["file"] for s in self.shards}
        named = {p.name for p in out.glob(f"{self.split}_*.bin")}
        assert named <= finished, f"{sorted(named - finished)} is visible before it is complete"
        checked.append(len(documents))

    monkeypatch.setattr(ShardWriter, "_write", write_and_look)
    prepare(PrepareConfig([str(corpus)], str(out), shard_size=30, val_docs=1, progress=False), log=quiet)
    assert sum(checked) == len(TEXTS)
    assert len(list(out.glob("train_*.bin"))) > 2
