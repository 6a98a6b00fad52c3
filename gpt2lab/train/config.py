"""Training configuration: the typed dataclasses, how one key is set from text, and RUN/config.toml.

A config is resolved from defaults, a preset, a file and the command line in train/config_files.py and checked in
train/config_checks.py. The resolved config is written to RUN/config.toml, so a run directory always says exactly
how it was trained.
"""

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from typing import Literal

from gpt2lab.errors import GPT2LabError
from gpt2lab.model.config import GPTConfig

class ConfigError(GPT2LabError, ValueError):
    """A config file, preset or override that does not fit TrainConfig."""


AUTO = "auto"
IntOrAuto = int | Literal["auto"]  # a number, or "auto": gpt2lab chooses it at start-up (data.batch_size)


@dataclass
class ModelSection:
    init: str = "scratch"  # "scratch", or a MODEL to fine-tune (gpt2, an HF directory, a run directory)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    vocab_size: int = 50304  # 50257 padded to a multiple of 128: faster matmuls, the extra rows learn ~nothing
    # from scratch only: the projections that write into the residual stream (attn.c_proj, mlp.c_proj) start at 0,
    # so each block starts as the identity (modded-nanogpt's init); not architecture: the model is a plain GPT-2
    zero_init_projections: bool = False

    def gpt_config(self) -> GPTConfig:
        """The architecture of a model trained from scratch: these fields but `init` and `zero_init_projections`,
        which say where the weights come from. The one place the section becomes a GPTConfig."""
        return GPTConfig(block_size=self.block_size, vocab_size=self.vocab_size, n_layer=self.n_layer,
                         n_head=self.n_head, n_embd=self.n_embd)


@dataclass
class DataSection:
    dir: str = "data/fineweb-edu"  # a directory written by `gpt2lab prepare`
    batch_size: IntOrAuto = 64  # B: sequences per micro-batch per process; "auto": the largest that fits in memory
    seq_len: int = 1024  # T: tokens per sequence
    total_batch_tokens: int = 524288  # tokens per optimizer step, over all processes and micro-batches
    grad_accum: int = 0  # micro-steps per step; 0: total_batch_tokens / (batch_size x seq_len x processes)
    shuffle: bool = True
    seed: int = 1337
    verify: bool = True  # check every shard's sha256 against the manifest when a run starts or resumes
    # issue 25's data options (docs/muon.md has their ablation), off by default
    align_to_documents: bool = False  # each row begins at a document's <|endoftext|> where it costs < a row
    seq_len_warmup_steps: int = 0  # short contexts first: seq_len_start, doubling, until data.seq_len at this step
    seq_len_start: int = 0  # the first steps' context (data.seq_len / a power of two); 0: no warm-up
    batch_warmup_steps: int = 0  # fewer tokens per step first: batch_start_tokens, doubling, until total_batch_tokens
    batch_start_tokens: int = 0  # the first steps' tokens (total_batch_tokens / a power of two); 0: no warm-up


@dataclass
class OptimSection:
    name: str = "adamw"  # adamw | muon (Muon for the blocks' 2-D weights, AdamW with the keys below for the rest)
    lr: float = 6e-4  # peak learning rate, reached at the end of warmup (AdamW's; with muon, for the AdamW part)
    min_lr: float = 6e-5  # floor of the cosine decay
    weight_decay: float = 0.1  # on >=2-D tensors only (matmul weights, embeddings)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables clipping (the norm is still logged)
    # Muon (optim.name = "muon" only; setting one with adamw is an error). Defaults not yet tuned for GPT-2.
    muon_lr: float = 0.02  # peak LR of the Muon groups; the schedule scales it as it scales lr (floor too)
    muon_momentum: float = 0.95
    muon_nesterov: bool = True
    muon_ns_steps: int = 5  # Newton-Schulz iterations
    muon_weight_decay: float = 0.0  # decoupled, on the Muon matrices
    muon_split_qkv: bool = True  # orthogonalise c_attn as three matrices (q, k, v), not one: measured better
    # Newton-Schulz in: auto (bf16 where the device computes it natively, else fp32) | bf16 | fp32. fp32 makes
    # Muon's numbers independent of how the gradients were summed (FSDP vs DDP), to float rounding.
    muon_ns_dtype: str = "auto"
    # the speed-run era's Muon refinements (issue 25; docs/muon.md has their ablation), all off by default
    muon_ns_coefficients: str = "quintic"  # quintic (fixed a, b, c) | polar_express (one per iteration, <= 5 steps)
    muon_normuon: bool = False  # NorMuon: per-neuron second-moment normalisation of the orthogonalised update
    muon_normuon_beta2: float = 0.95  # NorMuon's EMA factor, in [0, 1)
    cautious_wd: bool = False  # Muon's weight decay only where the update and the weight agree in sign
    muon_momentum_warmup_steps: int = 0  # momentum ramps linearly from muon_momentum_start to muon_momentum
    muon_momentum_start: float = 0.85
    # a moving average of the weights (train/ema.py), for the val loss and `gpt2lab export --ema`: its factor, in
    # (0, 1), e.g. 0.99; 0: off. Either optimizer.
    ema: float = 0.0
    # AdamW's decay (AdamW alone, or Muon's AdamW part) only where the step and the weight agree in sign (optim.py)
    adamw_cautious_wd: bool = False


@dataclass
class ScheduleSection:
    name: str = "cosine"  # cosine | wsd (warmup, constant, then a linear cool-down to min_lr)
    max_steps: int = 19073
    warmup_steps: int = 715
    decay_fraction: float = 0.2  # wsd: the cool-down is the last fraction of all steps, 0 < fraction <= 1


@dataclass
class EvalSection:
    val_every: int = 250  # steps between validation losses (0: never, except at the end)
    val_batches: int = 20  # fixed validation micro-batches per evaluation
    sample_every: int = 250  # steps between samples written to RUN/samples.txt (0: never)
    sample_count: int = 2
    sample_tokens: int = 64
    sample_prompt: str = "\n"
    sample_top_k: int = 50
    hellaswag_every: int = 0  # 0: off
    hellaswag_data: str = ""  # hellaswag_val.jsonl; empty: the gpt2lab cache (downloaded when online)
    hellaswag_limit: int = 0  # 0: all 10,042 examples


@dataclass
class CheckpointSection:
    every: int = 1000  # steps between checkpoints; one is always written at the end
    keep: int = 3  # the newest K checkpoints are kept


@dataclass
class ParallelSection:
    """How torchrun's processes share the model (train/parallel.py)."""

    strategy: str = "auto"  # ddp | fsdp | auto: DDP when a whole copy fits each device, else FSDP


@dataclass
class RuntimeSection:
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (auto: bf16 on CUDA, and on CPUs with native bf16)
    compile: bool = False
    activation_checkpointing: bool = False  # per block: recompute activations in the backward pass, far less memory
    seed: int = 1337  # model initialisation and sampling
    threads: int = 0  # torch CPU threads; 0: torch's default


@dataclass
class LogSection:
    """Dashboards besides RUN/metrics.jsonl (which is always written, and is the record): optional extras."""

    tensorboard: bool = False  # event files in RUN/tensorboard (pip install 'gpt2lab[tensorboard]')
    wandb: str = ""  # a Weights & Biases project name; empty: off (pip install 'gpt2lab[wandb]')
    wandb_entity: str = ""  # the W&B team or user; empty: your default entity
    wandb_run_name: str = ""  # the run's display name in W&B; empty: the run directory's name


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    eval: EvalSection = field(default_factory=EvalSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)
    log: LogSection = field(default_factory=LogSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict:
        """{"optim.lr": 0.0006, ...}"""
        return {f"{s}.{k}": v for s, values in self.to_dict().items() for k, v in values.items()}


SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(TrainConfig)}


def all_keys() -> list[str]:
    return list(TrainConfig().flat())


def _unknown_key(key: str) -> ConfigError:
    keys = all_keys()
    # Also match a bare field name ("lr") against the last part of every key ("optim.lr").
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    if not close:
        by_leaf = {k.split(".")[1]: k for k in keys}
        leaf = difflib.get_close_matches(key.split(".")[-1], list(by_leaf), n=1, cutoff=0.6)
        close = [by_leaf[leaf[0]]] if leaf else []
    hint = f"; did you mean '{close[0]}'?" if close else "; see `gpt2lab train --list-keys`"
    return ConfigError(f"unknown config key '{key}'{hint}")


def _convert(key: str, value, kind: type):
    """A value from a file (already typed) or the command line (a string) -> the field's type."""
    if kind is IntOrAuto:
        if isinstance(value, str) and value.strip().lower() == AUTO:
            return AUTO
        try:
            return _convert(key, value, int)
        except ConfigError:
            raise ConfigError(f"config key '{key}' wants an int or \"auto\", got {value!r}") from None
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "1", "yes", "on"):
                return True
            if text in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                return int(value)
            return int(str(value).replace("_", ""))
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if math.isnan(number):
                raise ValueError
            return number
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key '{key}' wants {kind.__name__}, got {value!r}") from None


def _field_types(section_name: str) -> dict[str, type]:
    types = {"int": int, "float": float, "bool": bool, "str": str}
    return {f.name: f.type if f.type is IntOrAuto else types[f.type if isinstance(f.type, str) else f.type.__name__]
            for f in dataclasses.fields(SECTIONS[section_name]())}


def set_value(config: TrainConfig, key: str, value) -> None:
    section_name, _, name = key.partition(".")
    if section_name not in SECTIONS or not name or name not in _field_types(section_name):
        raise _unknown_key(key)
    kind = _field_types(section_name)[name]
    setattr(getattr(config, section_name), name, _convert(key, value, kind))


def apply_mapping(config: TrainConfig, mapping: dict, where: str) -> None:
    """Apply a nested {"section": {"key": value}} mapping (a parsed file)."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: expected sections like [optim] with key = value lines")
    for section_name, values in mapping.items():
        if section_name not in SECTIONS:
            raise ConfigError(f"{where}: {_unknown_key(str(section_name))}")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: '{section_name}' must be a section of key = value pairs")
        for name, value in values.items():
            try:
                set_value(config, f"{section_name}.{name}", value)
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None


# --------------------------------------------------------------------------------- writing RUN/config.toml


def to_toml(config: TrainConfig) -> str:
    """Our config is flat sections of str/int/float/bool, so TOML is a few lines of code (no tomli-w needed)."""
    lines = ["# gpt2lab training config (resolved: defaults + preset + file + overrides)"]
    for section, values in config.to_dict().items():
        lines.append(f"\n[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)  # a JSON string is a valid TOML basic string


# Fields that may change between a run and its resumption: where/how it runs, how often it reports.
RESUMABLE_CHANGES = ("model.init", "data.dir", "data.grad_accum", "data.verify", "runtime.", "eval.", "checkpoint.", "log.",
                     "parallel.")


def incompatible_fields(saved: TrainConfig, new: TrainConfig) -> list[str]:
    old_flat, new_flat = saved.flat(), new.flat()
    return [f"{k} ({old_flat[k]!r} -> {new_flat[k]!r})" for k in old_flat
            if old_flat[k] != new_flat[k] and not k.startswith(RESUMABLE_CHANGES)]
