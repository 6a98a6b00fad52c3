"""What a MODEL names (gpt2lab/hf/resolve.py): a run directory's newest complete checkpoint, a local directory, a
released name in the HF cache; a missing path, a file or a directory without config.json refused by name."""

import pytest
import torch

from gpt2lab import load_model
from gpt2lab.errors import CheckpointError, ModelNotFoundError
from gpt2lab.hf.resolve import resolve_model_dir
from gpt2lab.storage.run_directory import RunDirectory

from tests.conftest import tiny_gpt


def test_run_directory_resolves_to_newest_complete_checkpoint(tmp_path):
    for step in (100, 900):
        tiny_gpt(seed=step).save_pretrained(tmp_path / "checkpoints" / f"step_{step:08d}")
    (tmp_path / "checkpoints" / ".tmp-step_00001000.abc").mkdir()  # an interrupted checkpoint write
    assert RunDirectory(tmp_path).latest_checkpoint().name == "step_00000900"
    assert resolve_model_dir(tmp_path).name == "step_00000900"
    loaded = load_model(tmp_path)
    assert torch.equal(loaded.transformer.wte.weight, tiny_gpt(seed=900).transformer.wte.weight)


def test_run_directory_without_checkpoints(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ModelNotFoundError, match="no complete checkpoint"):
        load_model(tmp_path)


def test_missing_path(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such directory"):
        load_model(tmp_path / "nope")
    with pytest.raises(FileNotFoundError):  # also the built-in a Python caller expects
        load_model("./nope")


def test_a_symlink_loop_is_named_as_one(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(ModelNotFoundError, match="is a symlink loop"):
        load_model(tmp_path / "a")
    (tmp_path / "self").symlink_to("self")
    with pytest.raises(ModelNotFoundError, match="is a symlink loop"):
        resolve_model_dir(str(tmp_path / "self"))


def test_directory_without_config_or_weights(tmp_path):
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        load_model(tmp_path)
    tiny_gpt().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        load_model(tmp_path)


def test_file_instead_of_directory(tmp_path):
    tiny_gpt().save_pretrained(tmp_path)
    with pytest.raises(ModelNotFoundError, match="is a file"):
        load_model(tmp_path / "model.safetensors")


def test_unknown_hub_id_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="not in the local HF cache, and HF_HUB_OFFLINE is set"):
        load_model("someone/no-such-model-xyz")


def test_released_names_resolve_to_openai_community_in_the_hf_cache(tmp_path, monkeypatch):
    """`gpt2` means the hub repository openai-community/gpt2: a model already in the standard HF cache (as a
    download leaves it) loads offline under that name, with its weights."""
    from huggingface_hub import constants

    model = tiny_gpt(seed=11)
    model.save_pretrained(tmp_path / "saved")
    repo = tmp_path / "hub" / "models--openai-community--gpt2"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (repo / "snapshots" / commit / name).write_bytes((tmp_path / "saved" / name).read_bytes())
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    loaded = load_model("gpt2")
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ModelNotFoundError):  # the other sizes are other repositories, not in this cache
        load_model("gpt2-medium")
