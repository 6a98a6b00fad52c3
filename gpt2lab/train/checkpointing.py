"""Checkpoints of a training run: the model (HF format) plus everything needed to continue exactly.

RUN/checkpoints/step_%08d/ = config.json + model.safetensors (what `load_model(RUN)` and transformers read)
+ vocab.json, merges.txt, tokenizer_config.json (GPT-2's tokenizer for HF tools, see `hf_tokenizer_files`)
+ training_state.pt (optimizer, grad scaler, step, each rank's data-loader position and RNG states, config),
written with torch.save and read back with torch.load(weights_only=True): tensors and plain containers only.
The directory is assembled under a temporary name and renamed when complete, so a kill at any moment leaves
the previous checkpoint intact and the half-written one invisible to `latest_checkpoint`.
"""

import re
import shutil
from pathlib import Path

import torch

from gpt2lab.atomic import TMP_PREFIX, atomic_directory
from gpt2lab.hf_format import save_model
from gpt2lab.model_source import CHECKPOINTS_DIR
from gpt2lab.errors import CheckpointError

STATE_FILE = "training_state.pt"
STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_dir(run_dir, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR / f"step_{step:08d}"


def rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(run_dir, step: int, model, training_state: dict, keep: int) -> Path:
    """Write checkpoint `step` atomically, then delete all but the newest `keep` complete checkpoints."""
    path = checkpoint_dir(run_dir, step)
    with atomic_directory(path) as tmp:
        save_model(model, tmp)
        torch.save({**training_state, "step": step}, tmp / STATE_FILE)
    prune_checkpoints(run_dir, keep)
    return path


def load_training_state(checkpoint: Path) -> dict:
    path = Path(checkpoint) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{checkpoint} has no {STATE_FILE}: it holds a model but cannot resume training "
                              f"(fine-tune from it with --init {checkpoint} instead)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} is unreadable ({str(e).splitlines()[0]}); delete that checkpoint "
                              f"directory to resume from the one before") from None


def complete_checkpoints(run_dir) -> list[tuple[int, Path]]:
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = STEP_DIR.match(child.name)
        if match and (child / "config.json").exists():
            found.append((int(match.group(1)), child))
    return sorted(found)


def prune_checkpoints(run_dir, keep: int) -> None:
    for _, path in complete_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def remove_stale_temporaries(run_dir) -> None:
    """Half-written checkpoints of a killed run (they never became complete, nothing refers to them)."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if root.is_dir():
        for child in root.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(child, ignore_errors=True)
