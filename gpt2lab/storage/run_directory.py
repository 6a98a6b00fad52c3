"""A training run's directory, defined once: what lives where (`RunDirectory`), and its metrics log.

    RUN/config.toml               the resolved training config (train/config.py writes and reads its text)
    RUN/metrics.jsonl             one JSON object per line, always with "step" (`read_metrics`; written by
                                  gpt2lab.train.metrics.MetricsLog)
    RUN/samples.txt               text sampled during training
    RUN/tensorboard/              TensorBoard event files (log.tensorboard = true)
    RUN/wandb/, RUN/wandb_run_id  Weights & Biases' local files, and the id of the W&B run (log.wandb = "PROJECT"),
                                  so that --resume continues the same W&B run
    RUN/checkpoints/step_%08d/    a Hugging Face GPT-2 directory + training_state.pt (train/checkpointing.py)
    RUN/.gpt2lab.lock             held by the one process that writes the run (storage/dirlock.py)

A checkpoint is complete once it has config.json, which `hf_format.save_model` writes last; checkpoints are
assembled under a `.tmp-` name and renamed, so a half-written one is never listed. Reading a run (its newest
checkpoint for `gpt2lab sample RUN`, its metrics for `gpt2lab plot`) needs no lock; writing one is the job of
rank 0 of the trainer that holds the lock, through this class.

This module sits below the model and the trainer (both use it), so it imports neither, nor gpt2lab.train.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from gpt2lab.storage.atomic import TMP_PREFIX, atomic_write_text
from gpt2lab.storage.dirlock import DirectoryLock
from gpt2lab.errors import GPT2LabError
from gpt2lab.hf.format import CONFIG_JSON

CONFIG_FILE, METRICS_FILE, SAMPLES_FILE, CHECKPOINTS_DIR = "config.toml", "metrics.jsonl", "samples.txt", "checkpoints"
TENSORBOARD_DIR, WANDB_DIR, WANDB_ID_FILE = "tensorboard", "wandb", "wandb_run_id"
# what --overwrite removes, nothing else
RUN_FILES = (CONFIG_FILE, METRICS_FILE, SAMPLES_FILE, CHECKPOINTS_DIR, TENSORBOARD_DIR, WANDB_DIR, WANDB_ID_FILE)
STEP_DIR = re.compile(r"^step_(\d+)$")


class RunDirectory:
    def __init__(self, path):
        self.path = Path(path)
        self.config_file = self.path / CONFIG_FILE
        self.metrics_file = self.path / METRICS_FILE
        self.samples_file = self.path / SAMPLES_FILE
        self.checkpoints_dir = self.path / CHECKPOINTS_DIR
        self.tensorboard_dir = self.path / TENSORBOARD_DIR
        self.wandb_id_file = self.path / WANDB_ID_FILE
        self.lock: DirectoryLock | None = None

    # --- reading ------------------------------------------------------------------------------------------------

    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints_dir / f"step_{step:08d}"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """The complete checkpoints as (step, directory), oldest first."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = []
        for child in self.checkpoints_dir.iterdir():
            match = STEP_DIR.match(child.name)
            if match and (child / CONFIG_JSON).exists():
                found.append((int(match.group(1)), child))
        return sorted(found)

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1][1] if found else None

    def holds_run(self) -> bool:
        return self.path.is_dir() and any((self.path / name).exists() for name in RUN_FILES)

    def check_is_directory(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise GPT2LabError(f"run directory {self.path} is a file; choose another --out")

    # --- writing: the lock holder only --------------------------------------------------------------------------

    def acquire(self, what: str) -> None:
        """Take the directory's lock (creating the directory), or raise naming the process that holds it."""
        self.lock = DirectoryLock(self.path, what=what).acquire()

    def release(self, failed: bool) -> None:
        if self.lock is not None:
            # A launch that failed before writing anything leaves no empty run directory behind.
            self.lock.release(remove_if_unused=failed)
            self.lock = None

    def prepare(self, config_toml: str, overwrite: bool, resumed_step: int | None) -> None:
        """Make the directory ready for training: a replaced run's files gone (--overwrite), half-written
        checkpoints of a killed run gone, the config written, and, on resume, the metrics a killed run logged
        after its last checkpoint forgotten (those steps are computed again)."""
        if overwrite and resumed_step is None:
            for name in RUN_FILES:  # only our own files: a user's notes in the directory survive
                path = self.path / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        self.remove_stale_temporaries()
        atomic_write_text(self.config_file, config_toml)
        if resumed_step is not None:
            truncate_metrics(self.metrics_file, after_step=resumed_step)

    def remove_stale_temporaries(self) -> None:
        """Half-written checkpoints of a killed run (they never became complete, nothing refers to them)."""
        if self.checkpoints_dir.is_dir():
            for child in self.checkpoints_dir.glob(f"{TMP_PREFIX}*"):
                shutil.rmtree(child, ignore_errors=True)

    def prune_checkpoints(self, keep: int) -> None:
        """Delete all but the newest `keep` complete checkpoints."""
        for _, path in self.checkpoints()[:-keep]:
            shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ metrics.jsonl
# One JSON object per line, always with "step"; written by gpt2lab.train.metrics.MetricsLog.


def truncate_metrics(path, after_step: int) -> None:
    """Drop records after `after_step` (logged by a killed run past its last checkpoint), atomically."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= after_step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by the kill
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def read_metrics(path) -> list[dict]:
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records
