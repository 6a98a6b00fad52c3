"""Checkpoints (gpt2lab/train/checkpointing.py): what a trainer checkpoint holds, and only the newest K are kept."""

import json

from gpt2lab.storage.run_directory import RunDirectory
from gpt2lab.train import train
from gpt2lab.train.checkpointing import save_checkpoint

from tests.conftest import tiny_gpt
from tests.train_utils import quiet, tiny_config, write_dataset

MODEL_FILES = ["config.json", "model.safetensors"]
TOKENIZER_FILES = ["merges.txt", "tokenizer_config.json", "vocab.json"]


def test_trainer_checkpoint_has_the_files(tmp_path):
    model = tiny_gpt(vocab_size=50304, block_size=32)
    path = save_checkpoint(RunDirectory(tmp_path), model, {"step": 7, "note": "state"}, keep=2)
    assert sorted(p.name for p in path.iterdir()) == sorted([*MODEL_FILES, *TOKENIZER_FILES, "training_state.pt"])
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000007"]  # no temporaries left
    assert json.loads((path / "tokenizer_config.json").read_text())["model_max_length"] == 32


def test_only_the_newest_k_checkpoints_are_kept(tmp_path):
    data = write_dataset(tmp_path / "data")
    train(tiny_config(data, schedule__max_steps=7, checkpoint__every=2, checkpoint__keep=2), tmp_path / "run",
          log=quiet)
    assert [step for step, _ in RunDirectory(tmp_path / "run").checkpoints()] == [6, 7]  # 2 and 4 were pruned
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_00000006", "step_00000007"]
