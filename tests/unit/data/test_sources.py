"""The sources `gpt2lab prepare` reads (gpt2lab/data/sources.py): folders (not the output inside them), .jsonl, .json
and .parquet records (bad ones skipped and reported, or refused with --strict), Hugging Face datasets streamed, and
invalid UTF-8."""

import json

import pytest

from gpt2lab.data import DataError, PrepareConfig, prepare, read_manifest

from tests.data_utils import TEXTS, documents_of, quiet, write_txt_corpus


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


def test_jsonl_json_parquet_sources_and_skipped_records(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.jsonl").write_text('{"text": "one"}\nnot json\n{"body": "no text field"}\n\n{"text": "two"}\n'
                                      + "[" * 100_000 + "\n")  # nested too deeply for the decoder: skipped too
    (tmp_path / "b.json").write_text(json.dumps([{"content": "three"}, {"content": "four"}]))
    pq.write_table(pa.table({"content": ["five", "six"]}), tmp_path / "c.parquet")
    logs = []
    prepare(PrepareConfig([str(tmp_path / "a.jsonl")], str(tmp_path / "o1"), val_docs=0, progress=False), logs.append)
    assert documents_of(tmp_path / "o1", "train") == ["one", "two"]
    joined = "\n".join(logs)
    assert "a.jsonl:2" in joined and "a.jsonl:3" in joined and "a.jsonl:6" in joined  # lines of skipped records
    assert read_manifest(tmp_path / "o1")["skipped"]["bad_json"] == 2
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


def test_invalid_utf8_is_replaced_and_reported(tmp_path):
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "bad.txt").write_bytes(b"caf\xe9 ok \xff\xfe end")
    logs = []
    prepare(PrepareConfig([str(corpus)], str(tmp_path / "o"), val_docs=0, progress=False), logs.append)
    assert documents_of(tmp_path / "o", "train") == ["caf\ufffd ok \ufffd\ufffd end"]
    assert any("invalid UTF-8" in line and "3 bytes" in line and "bad.txt" in line for line in logs)
