"""GPT-2's tokenizer (gpt2lab/tokenizer.py): known ids, round trips, an explicit rank file, and ranks from the package
index verified before use. (A real `pip download`: tests/e2e/test_package_index.py.)"""

import pytest

from gpt2lab import get_tokenizer, tokenizer as tokenizer_module
from gpt2lab.errors import TokenizerError
from gpt2lab.storage.cache import cache_dir

HELLO = "Hello, I'm a language model,"
HELLO_IDS = [15496, 11, 314, 1101, 257, 3303, 2746, 11]


def test_known_ids():
    tok = get_tokenizer()
    assert tok.encode(HELLO) == HELLO_IDS
    assert tok.eot_token == 50256 and tok.n_vocab == 50257
    assert tok.decode(HELLO_IDS) == HELLO


def test_unicode_round_trip_and_batch():
    tok = get_tokenizer()
    texts = ["naïve café — 東京 🚀 Ωμέγα\n\ttabs  and  spaces", "", "<|endoftext|> is text here"]
    for text in texts:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert 50256 not in tok.encode(texts[2])  # the literal string is not the special token


def test_explicit_file(tmp_path, monkeypatch):
    get_tokenizer.cache_clear()
    source = cache_dir() / "gpt2.tiktoken"
    if not source.exists():
        pytest.skip("no cached rank file to copy")
    path = tmp_path / "ranks.tiktoken"
    path.write_bytes(source.read_bytes())
    assert get_tokenizer(path).encode(HELLO) == HELLO_IDS
    monkeypatch.setenv("GPT2LAB_BPE_FILE", str(tmp_path / "missing.tiktoken"))
    with pytest.raises(TokenizerError, match="does not exist"):
        get_tokenizer()
    get_tokenizer.cache_clear()


def fake_pip_download(rank_bytes):
    """subprocess.run for `pip download openai-whisper`: an sdist holding `rank_bytes` as the rank file."""
    import io
    import subprocess
    import tarfile
    from pathlib import Path

    def run(cmd, **kwargs):
        dest = Path(cmd[cmd.index("--dest") + 1])
        with tarfile.open(dest / "openai-whisper-20250625.tar.gz", "w:gz") as tar:
            info = tarfile.TarInfo(f"openai-whisper-20250625/{tokenizer_module.WHISPER_MEMBER}")
            info.size = len(rank_bytes)
            tar.addfile(info, io.BytesIO(rank_bytes))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    return run


def test_ranks_from_the_package_index_are_verified_before_use(tmp_path, monkeypatch):
    """A rank file whose sha256 is not GPT-2's is refused, and not cached; the genuine one is cached."""
    import tiktoken

    from gpt2lab.storage import cache as cache_module

    genuine = cache_module.cache_dir() / "gpt2.tiktoken"
    genuine_bytes = genuine.read_bytes() if genuine.exists() else None
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: (_ for _ in ()).throw(ConnectionError()))
    monkeypatch.setenv("GPT2LAB_CACHE", str(tmp_path))
    monkeypatch.delenv("GPT2LAB_BPE_FILE", raising=False)
    tampered = genuine_bytes.replace(b"IQ== 0", b"Ig== 0", 1) if genuine_bytes else b"IQ== 1\nIg== 0\n"
    monkeypatch.setattr(cache_module.subprocess, "run", fake_pip_download(tampered))
    get_tokenizer.cache_clear()
    try:
        with pytest.raises(TokenizerError, match="sha256"):
            get_tokenizer()
        assert not (tmp_path / "gpt2.tiktoken").exists()
        if genuine_bytes is None:
            pytest.skip("no cached rank file for the genuine case")
        monkeypatch.setattr(cache_module.subprocess, "run", fake_pip_download(genuine_bytes))
        get_tokenizer.cache_clear()
        assert get_tokenizer().encode(HELLO) == HELLO_IDS
        assert (tmp_path / "gpt2.tiktoken").read_bytes() == genuine_bytes
    finally:
        get_tokenizer.cache_clear()
