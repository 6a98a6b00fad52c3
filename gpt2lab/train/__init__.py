"""Training: typed config, AdamW or Muon + schedules, the loop (one CPU to many GPUs), exactly resumable checkpoints."""

from gpt2lab.train.config import TrainConfig
from gpt2lab.train.config_files import resolve_config
from gpt2lab.train.trainer import TrainResult, Trainer, train

__all__ = ["TrainConfig", "TrainResult", "Trainer", "resolve_config", "train"]
