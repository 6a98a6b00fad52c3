"""A MODEL from the Hugging Face hub, from a real `gpt2lab inspect` process (huggingface_hub reads its settings at
import): a miss is one line at once, offline or with an unreachable hub; a cached model loads without the network."""

import pytest

from tests.conftest import run_cli, tiny_gpt


# Subprocesses, so that huggingface_hub reads these at import. The endpoint is a closed local port: every request
# is refused at once, whatever network the machine has. "0" turns off the HF_HUB_OFFLINE=1 that conftest sets.
UNREACHABLE_HUB = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "OMP_NUM_THREADS": "1"}


def _assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr


def test_hub_miss_with_hf_hub_offline_is_one_line(tmp_path):
    proc = run_cli("inspect", "gpt2", env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": tmp_path}, timeout=120)
    _assert_one_line_error(proc, "'openai-community/gpt2'", "not in the local HF cache", "HF_HUB_OFFLINE is set",
                           "--local-dir")


def test_hub_miss_with_unreachable_hub_fails_at_once_without_retries(tmp_path):
    # huggingface_hub alone retries five times with backoff (~25 s), printing a warning each time
    proc = run_cli("inspect", "gpt2", env={**UNREACHABLE_HUB, "HF_HUB_CACHE": tmp_path}, timeout=120)
    _assert_one_line_error(proc, "not in the local HF cache", "Hub is unreachable", "--local-dir")


def _cache_entry(hub_cache, repo_id, model):
    """`model` as huggingface_hub's cache holds a download of repo_id: refs/main names a snapshot directory."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    model.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


@pytest.mark.parametrize("offline", ["1", "0"], ids=["HF_HUB_OFFLINE", "unreachable"])
def test_cached_hub_model_loads_without_network(tmp_path, offline):
    _cache_entry(tmp_path, "someone/tiny", tiny_gpt())
    env = {**UNREACHABLE_HUB, "HF_HUB_OFFLINE": offline, "HF_HUB_CACHE": tmp_path}
    proc = run_cli("inspect", "someone/tiny", env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "n_layer" in proc.stdout and proc.stderr == ""
