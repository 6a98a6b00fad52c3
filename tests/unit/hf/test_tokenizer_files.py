"""GPT-2's tokenizer as HF files beside every checkpoint (gpt2lab/hf/tokenizer_files.py): transformers loads it from
the directory alone (no hub, no `tokenizer=gpt2`) and encodes exactly as tiktoken does; without the BPE ranks the
model is still saved."""

import json

import pytest

from gpt2lab import get_tokenizer, load_model
from gpt2lab.errors import TokenizerError
from gpt2lab.hf import tokenizer_files as hf_files

from tests.conftest import tiny_gpt

MODEL_FILES = ["config.json", "model.safetensors"]
TOKENIZER_FILES = ["merges.txt", "tokenizer_config.json", "vocab.json"]
SAMPLES = [
    "Hello, I'm a language model,",
    "def f(x):\n    return x ** 2  # squares\n\n\n\tif x != 0: print(f'{x=}')",
    "naïve café — 東京 🚀 Ωμέγα, 👨‍👩‍👧‍👦 🏳️‍🌈, \u200b\u00a0",
    "I'll, we've, they're, don't, DON'T, it's, she'd",
    "a , b . c 's ( d )",  # decoded with HF's "clean up" these would lose their spaces
    "   leading spaces, trailing spaces   ",
    "\r\n\r\n  \n \t ",
    "1234567890 3.14159 1,000,000 0x1F 2024-01-01",
    "",
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A model with the padded 50,304-row embedding, saved once (the session's first save derives the files)."""
    path = tmp_path_factory.mktemp("padded")
    tiny_gpt(vocab_size=50304, block_size=64).save_pretrained(path)
    return path


def test_auto_tokenizer_from_checkpoint_encodes_like_tiktoken(saved):
    from transformers import AutoTokenizer, GPT2Tokenizer, GPT2TokenizerFast

    ours = get_tokenizer()
    hf = AutoTokenizer.from_pretrained(saved)  # HF_HUB_OFFLINE=1 (conftest): the directory alone must do
    assert len(hf) == 50257 and hf.eos_token_id == hf.bos_token_id == 50256 and hf.model_max_length == 64
    for text in SAMPLES:
        ids = hf(text)["input_ids"]
        assert ids == ours.encode(text), text
        assert hf.decode(ids) == text
    for cls in (GPT2Tokenizer, GPT2TokenizerFast):
        assert cls.from_pretrained(saved)(SAMPLES[1])["input_ids"] == ours.encode(SAMPLES[1])


def test_files_hold_gpt2s_vocab_and_merges(saved):
    vocab = json.loads((saved / "vocab.json").read_text(encoding="utf-8"))
    merges = (saved / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == 50257 and sorted(vocab.values()) == list(range(50257))
    assert vocab["Ġthe"] == 262 and vocab["<|endoftext|>"] == 50256
    assert merges[0] == "#version: 0.2" and len(merges) == 1 + 50000
    assert merges[1:8] == ["Ġ t", "Ġ a", "h e", "i n", "r e", "o n", "Ġt he"]  # GPT-2's first merges
    config = json.loads((saved / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "GPT2Tokenizer" and config["model_max_length"] == 64
    assert json.loads((saved / "config.json").read_text())["vocab_size"] == 50304  # the model keeps its padding


def test_hf_pipeline_runs_from_the_checkpoint(saved):
    from transformers import pipeline

    generate = pipeline("text-generation", model=str(saved), device="cpu")
    out = generate("Hello, I'm", max_new_tokens=3, do_sample=False)
    assert out[0]["generated_text"].startswith("Hello, I'm")


def test_toy_vocabulary_gets_no_gpt2_tokenizer(tmp_path):
    tiny_gpt(vocab_size=1011).save_pretrained(tmp_path)  # GPT-2's tokenizer would emit ids it does not have
    assert sorted(p.name for p in tmp_path.iterdir()) == MODEL_FILES


def test_without_the_bpe_ranks_the_model_is_saved_with_one_warning(tmp_path, monkeypatch):
    def unavailable():
        raise TokenizerError("cannot load the GPT-2 BPE ranks; tried everything")

    monkeypatch.setattr(hf_files, "get_tokenizer", unavailable)
    monkeypatch.setattr(hf_files, "_unavailable", {})
    monkeypatch.setenv("GPT2LAB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.warns(UserWarning, match="without tokenizer files.*cannot load the GPT-2 BPE ranks"):
        tiny_gpt(vocab_size=50257).save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == MODEL_FILES
    assert load_model(tmp_path / "model").config.vocab_size == 50257
    # A training run saves many times: the failure is remembered, not retried (a failing download can be slow).
    monkeypatch.setattr(hf_files, "get_tokenizer", lambda: pytest.fail("retried the tokenizer"))
    with pytest.warns(UserWarning, match="without tokenizer files"):
        tiny_gpt(vocab_size=50257).save_pretrained(tmp_path / "again")
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == MODEL_FILES


def test_interrupted_save_never_looks_complete(tmp_path, monkeypatch, saved):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C while the tokenizer files are copied

    monkeypatch.setattr(hf_files.shutil, "copyfile", crash)
    with pytest.raises(KeyboardInterrupt):
        tiny_gpt(vocab_size=50257).save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no config.json, no temporaries


def test_last_merge_follows_bpe_order():
    ranks = {b"a": 0, b"b": 1, b"ab": 2, b"abab": 3, b"bba": 4}
    assert hf_files._last_merge(b"abab", 3, ranks) == (b"ab", b"ab")  # ties: the leftmost pair merges first
    with pytest.raises(TokenizerError, match="cannot be built"):
        hf_files._last_merge(b"bba", 4, ranks)  # neither "bb" nor "ba" is a token: not a BPE rank file
