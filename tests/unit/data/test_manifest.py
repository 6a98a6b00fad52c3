"""The dataset format (gpt2lab/data/manifest.py): shard names, the manifest read back or refused (missing, an
unfinished prepare, unreadable, another format or tokenizer), and data beyond a model's vocabulary refused."""

import json

import pytest

from gpt2lab.data import DataError, read_manifest
from gpt2lab.data.manifest import check_vocabulary, shard_name

GOOD = {"format": "gpt2lab-shards/1", "tokenizer": "gpt2", "vocab_size": 50257, "eot_token": 50256,
        "dtype": "uint16", "source": "test", "args": {}, "splits": {"train": []}}


def test_shard_names_sort_in_shard_order():
    assert shard_name("train", 7) == "train_000007.bin"
    names = [shard_name("val", i) for i in (10, 9, 100, 0)]
    assert sorted(names) == [shard_name("val", i) for i in (0, 9, 10, 100)]


def test_a_complete_manifest_is_read_back(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(GOOD))
    assert read_manifest(tmp_path) == GOOD


def test_a_directory_without_a_dataset_says_how_to_make_one(tmp_path):
    with pytest.raises(DataError, match="does not exist; create it with `gpt2lab prepare SOURCE --out"):
        read_manifest(tmp_path / "nowhere")
    with pytest.raises(DataError, match="has no manifest.json; create the dataset with `gpt2lab prepare"):
        read_manifest(tmp_path)
    (tmp_path / "train_000000.bin").write_bytes(b"\0\0")  # shards but no manifest: a prepare that did not finish
    with pytest.raises(DataError, match="is an unfinished `gpt2lab prepare`.*rerun the same prepare command"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("content, needle", [
    ("{broken", "is unreadable"),
    (json.dumps([1, 2]), "is not a gpt2lab-shards/1 manifest"),
    (json.dumps({**GOOD, "format": "gpt2lab-shards/0"}), "is not a gpt2lab-shards/1 manifest"),
    (json.dumps({**GOOD, "tokenizer": "llama", "vocab_size": 32000}), "holds tokens of another tokenizer"),
    (json.dumps({**GOOD, "dtype": "uint32"}), "holds tokens of another tokenizer"),
], ids=["unreadable", "not-an-object", "other-format", "other-tokenizer", "other-dtype"])
def test_a_manifest_that_is_not_ours_is_refused(tmp_path, content, needle):
    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(DataError, match=needle):
        read_manifest(tmp_path)


def test_data_with_ids_beyond_the_model_vocabulary_is_refused(tmp_path):
    check_vocabulary(tmp_path, GOOD, 50257)  # exactly enough rows
    check_vocabulary(tmp_path, GOOD, 50304)
    with pytest.raises(DataError, match=r"token ids up to 50256 but model.vocab_size is 50000; set "
                                        r"model.vocab_size=50257 or more"):
        check_vocabulary(tmp_path, GOOD, 50000)
    with pytest.raises(DataError, match="but the vocabulary of gpt2 is 1000"):
        check_vocabulary(tmp_path, GOOD, 1000, what="the vocabulary of gpt2")
