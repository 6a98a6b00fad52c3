"""Training checkpoints: the model plus everything needed to continue exactly, and the `Checkpointer` that writes
them and restores training from one.

RUN/checkpoints/step_%08d/ (named by `RunDirectory`) holds config.json (written last: it marks the checkpoint
complete) and training_state.pt:

    step                  the number of steps done
    optimizer, scaler     each one's state_dict(), the same on every rank (rank 0's is saved)
    ema                   the weights' moving average (train/ema.py), {} without optim.ema (as scaler without fp16)
    loader, rng           a list of every rank's state, in rank order
    world_size, config    the number of processes and the TrainConfig (a dict) it was saved with

written with torch.save and read back with torch.load(weights_only=True): tensors and plain containers only. The
model is there in Hugging Face format (model.safetensors + GPT-2's tokenizer files: what `load_model(RUN)` and
transformers read). Under FSDP the model and optimizer state are DCP's instead (sharded_checkpoint.py: every rank
writes its part) and the HF model is written with the final checkpoint; `gpt2lab export` makes it of any other.

The directory is assembled under a temporary name and renamed when complete (by rank 0, once every rank has
written), so a kill at any moment leaves the previous checkpoint intact and the half-written one invisible. Only
finite weights and optimizer state are saved. As in torchtitan, the trainer hands the Checkpointer its pieces of
state by name, each an object with `state_dict()` / `load_state_dict()`; the step counter is one of them.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from gpt2lab.errors import BadValue, CheckpointError, GPT2LabError, first_line
from gpt2lab.hf.format import SAFETENSORS, read_config, save_model, save_state_dict, write_config
from gpt2lab.runtime import distributed
from gpt2lab.storage.atomic import atomic_directory, publish_directory, reporting_refusals, temporary_directory
from gpt2lab.storage.run_directory import RunDirectory
from gpt2lab.train import sharded_checkpoint

STATE_FILE = "training_state.pt"


def write_training_state(state: dict, path: Path) -> None:
    """torch.save through a Python file: given a path, torch writes from C++ and a full disk or a file-size limit
    reads only "unexpected pos"; through a Python file, the OS's refusal stays in the exception's context, where
    `output_error` finds its errno."""
    with open(path, "wb") as f:
        torch.save(state, f)


class NonFiniteState(GPT2LabError, FloatingPointError):
    """The weights or the optimizer state hold NaN or infinity: nothing of them is saved."""


class Checkpointer:
    """Writes a run's checkpoints and restores training from one.

    model: the model as trained (under FSDP, sharded); optimizer: its optimizer; sharded: FSDP (DCP files);
    states: the same on every rank (the grad scaler): rank 0's is saved, and loaded on every rank;
    rank_states: each rank's own: all ranks' are saved, a list in rank order, and `load_state_dict` receives the
        list to take what it needs from.
    Each process's RNG is saved the same way by the checkpointer itself: it is the process's global state, not an
    object of the trainer's.
    """

    def __init__(self, run: RunDirectory, model, optimizer, ctx: distributed.DistContext, device: torch.device, *,
                 progress: StepCounter, states: dict, rank_states: dict, config: dict, keep: int, seed: int,
                 sharded: bool = False):
        self.run, self.model, self.optimizer, self.ctx, self.device = run, model, optimizer, ctx, device
        self.progress, self.states, self.rank_states = progress, {"step": progress, **states}, rank_states
        self.config, self.keep, self.seed, self.sharded = config, keep, seed, sharded

    def save(self, final: bool = False) -> Path:
        """Every rank calls this; the checkpoint of the step done is complete once it returns. `final`: the run's
        last one, which always holds the whole model in HF format."""
        self._check_finite()
        mine = {name: state.state_dict() for name, state in self.rank_states.items()}
        mine["rng"] = rng_state(self.device)
        every_rank = distributed.all_gather_object(mine)
        training_state = {name: state.state_dict() for name, state in self.states.items()}
        training_state.update({name: [rank[name] for rank in every_rank] for name in mine})
        training_state.update(world_size=self.ctx.world_size, config=self.config)
        path = self.run.checkpoint_dir(self.progress.step)
        if self.sharded:
            self._save_sharded(path, training_state, final)
        elif self.ctx.is_main:
            training_state["optimizer"] = self.optimizer.state_dict()
            with atomic_directory(path) as tmp:
                save_model(self.model, tmp)
                write_training_state(training_state, tmp / STATE_FILE)
        if self.ctx.is_main:
            self.run.prune_checkpoints(self.keep)
        distributed.barrier()
        return path

    def _save_sharded(self, path: Path, training_state: dict, final: bool) -> None:
        """Rank 0 makes the temporary directory, every rank writes its shards into it, rank 0 adds the rest and
        renames it once all have finished (DCP's save ends when every rank's part and the metadata are written)."""
        tmp = distributed.broadcast_from_main(temporary_directory(path) if self.ctx.is_main else None)
        try:
            with reporting_refusals(path):
                sharded_checkpoint.save_sharded(tmp, self.model, self.optimizer)
            whole = sharded_checkpoint.whole_model_state(self.model) if final else None
            if self.ctx.is_main:
                with reporting_refusals(path):
                    write_training_state(training_state, tmp / STATE_FILE)
                if whole is not None:
                    save_state_dict(whole, self.model.config, tmp)  # config.json last
                else:
                    write_config(self.model.config, tmp)
                publish_directory(tmp, path)
        except BaseException:
            if self.ctx.is_main:
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _check_finite(self) -> None:
        """Refuse to save weights or optimizer state holding NaN or infinity: a checkpoint is a good state."""
        bad = 0.0
        for p in self.model.parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            bad += float(not torch.isfinite(local).all())
        for state in _optimizer_tensors(self.optimizer):
            local = state.to_local() if hasattr(state, "to_local") else state
            bad += float(local.is_floating_point() and not torch.isfinite(local).all())
        flag = torch.tensor(bad, device=self.device if self.device.type == "cuda" else "cpu")
        if float(distributed.all_reduce_sum(flag)) > 0:
            raise NonFiniteState(f"the weights or the optimizer state became NaN or infinite by step "
                                 f"{self.progress.step}; not saved")

    def load(self, checkpoint: Path) -> dict:
        """Restore every piece of state and this process's RNG from `checkpoint`; returns the saved training state
        (`step`, `world_size`, ...). The model's weights come with the model (the trainer loads a whole checkpoint's
        HF weights before sharding), except from a sharded checkpoint, whose model state is loaded here."""
        saved = load_training_state(checkpoint)
        if sharded_checkpoint.is_sharded(checkpoint):
            sharded_checkpoint.load_sharded(checkpoint, self.model, self.optimizer)
        elif self.sharded:
            sharded_checkpoint.load_whole_optimizer(self.model, self.optimizer, saved["optimizer"])
        else:
            self.optimizer.load_state_dict(saved["optimizer"])
        for name, state in {**self.states, **self.rank_states}.items():
            if name in saved or not isinstance(state, OptionalState):  # a checkpoint from before an optional state
                state.load_state_dict(saved[name])
        self._restore_rng(saved["rng"], self.progress.step)
        return saved

    def _restore_rng(self, saved: list, step: int) -> None:
        """Rank r continues saved rank r's RNG stream; a rank the saved run did not have (more processes now) is
        seeded from runtime.seed, its rank and the step: deterministic, and not a replay of any rank's start."""
        rank = self.ctx.rank
        if rank < len(saved):
            set_rng_state(saved[rank], self.device)
        else:
            torch.manual_seed(self.seed + rank + 1_000_003 * step)


def _optimizer_tensors(optimizer):
    for torch_optimizer in sharded_checkpoint.optimizers_of(optimizer):
        for state in torch_optimizer.state.values():
            yield from (v for v in state.values() if isinstance(v, torch.Tensor))


class StepCounter:
    """The number of optimizer steps done: saved as the checkpoint's "step" (an int) and naming its directory."""

    def __init__(self, step: int = 0):
        self.step = step

    def state_dict(self) -> int:
        return self.step

    def load_state_dict(self, step) -> None:
        self.step = int(step)


class OptionalState:
    """A piece of state that a run may not have (the grad scaler exists with fp16 only): saved as {} when absent,
    and nothing to load when either side lacks it (precision may change on resume)."""

    def __init__(self, obj):
        self.obj = obj

    def state_dict(self) -> dict:
        return self.obj.state_dict() if self.obj is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.obj is not None and state:
            self.obj.load_state_dict(state)


class SameOnEveryRank:
    """A rank state whose value is the same on every rank: the data loader's position counts chunks of the whole
    step, so any rank's resumes every rank, with any number of processes (for the same total batch, which the
    trainer's resume check guarantees). Saved from every rank, restored from rank 0's."""

    def __init__(self, obj):
        self.obj = obj

    def state_dict(self) -> dict:
        return self.obj.state_dict()

    def load_state_dict(self, every_rank: list) -> None:
        self.obj.load_state_dict(every_rank[0])


# ------------------------------------------------------------------------------------------------ files


def load_training_state(checkpoint: Path, lazily: bool = False) -> dict:
    """training_state.pt of `checkpoint`; `lazily` maps its tensors instead of reading them (to look at the saved
    config, say)."""
    path = Path(checkpoint) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{checkpoint} has no {STATE_FILE}: it holds a model but cannot resume training "
                              f"(fine-tune from it with --init {checkpoint} instead)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=lazily)
    except Exception as e:
        raise CheckpointError(f"{path} is unreadable ({first_line(e)}); delete that checkpoint "
                              f"directory to resume from the one before") from None


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why `checkpoint` cannot be resumed from (a file missing or cut short), or None. Reads headers and indexes
    only, not the tensors: cheap enough to run on every checkpoint of a run."""
    checkpoint = Path(checkpoint)
    state = checkpoint / STATE_FILE
    if not state.is_file():
        return f"{STATE_FILE} is missing"
    try:
        with zipfile.ZipFile(state) as archive:  # torch.save writes a zip; a cut one has no central directory
            archive.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        return f"{STATE_FILE} is unreadable ({first_line(e)})"
    if sharded_checkpoint.is_sharded(checkpoint):
        return sharded_checkpoint.sharded_problem(checkpoint)
    return _safetensors_problem(checkpoint / SAFETENSORS)


def _safetensors_problem(path: Path) -> str | None:
    import json
    import struct

    if not path.is_file():
        return f"{path.name} is missing"
    try:
        with open(path, "rb") as f:
            (header_size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_size))
        end = max(info["data_offsets"][1] for key, info in header.items() if key != "__metadata__")
    except (OSError, ValueError, struct.error, KeyError, TypeError) as e:
        return f"{path.name} has an unreadable header ({first_line(e)})"
    if path.stat().st_size < 8 + header_size + end:
        return f"{path.name} is truncated ({path.stat().st_size} of {8 + header_size + end} bytes)"
    return None


def resumable_checkpoint(run: RunDirectory, log=print) -> Path | None:
    """The newest checkpoint of `run` that can be resumed from, saying which newer ones it skips and why (they
    are left in place); None when the run has none; refused when it has some but every one is damaged."""
    damaged = []
    for _, checkpoint in reversed(run.checkpoints()):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint
        log(f"warning: skipping damaged checkpoint {checkpoint}: {problem}")
        damaged.append(f"{checkpoint.name}: {problem}")
    if damaged:
        raise CheckpointError(f"every checkpoint of {run.path} is damaged ({'; '.join(damaged)}); nothing to resume "
                              f"from: restore the files, or start again with --overwrite")
    return None


def resume_point(run: RunDirectory, config, resume: bool, overwrite: bool, log=print):
    """(checkpoint or None, the config to run, starts_over) for a launch into `run`. The checkpoint is the newest
    complete, undamaged one (resume); the config is the given one once that checkpoint's own saved config allows
    it (a resumed data.batch_size of "auto" is the number the run chose when it started). A run killed before its
    first checkpoint starts over from step 0 (starts_over), with or without --resume."""
    from gpt2lab.train.batch import with_batch_size
    from gpt2lab.train.config import AUTO, incompatible_fields
    from gpt2lab.train.config_files import resolve_config

    run.check_is_directory()
    holds_run = run.holds_run()
    checkpoint = resumable_checkpoint(run, log=log) if resume or (holds_run and not overwrite) else None
    if checkpoint is None:
        starts_over = holds_run and (resume or not overwrite)
        if starts_over or resume:
            log(f"{run.path} has no complete checkpoint to resume from: starting from step 0")
        return None, config, starts_over
    if not resume:
        raise GPT2LabError(f"{run.path} already holds a training run; pass --resume to continue it, "
                           f"--overwrite to replace it, or choose another --out")
    saved = resolve_config(base=load_training_state(checkpoint, lazily=True)["config"])
    if config.data.batch_size == AUTO:  # chosen when the run started: the token stream depends on it
        config = with_batch_size(config, saved.data.batch_size)
        log(f"data.batch_size auto: {saved.data.batch_size}, as the run chose when it started")
    differences = incompatible_fields(saved, config)
    if differences:
        raise BadValue("resume", f"cannot continue this run: the config differs from its checkpoint's in "
                                 f"{'; '.join(differences)}; resume with the original values or start a new run")
    return checkpoint, config, False


def model_source(checkpoint: Path) -> Path | None:
    """The HF directory to load a checkpoint's model from, or None when only its sharded state holds it."""
    return checkpoint if (Path(checkpoint) / SAFETENSORS).is_file() else None


def export_checkpoint(checkpoint: Path, out: Path, averaged: bool = False) -> Path:
    """The model of `checkpoint` as a plain Hugging Face directory `out`: copied from its HF files, or gathered
    from its sharded state on this process's CPU; `averaged`: the moving average of its weights instead (optim.ema)."""
    import shutil

    problem = checkpoint_problem(checkpoint)
    if problem and not (Path(checkpoint) / SAFETENSORS).is_file():
        raise CheckpointError(f"{checkpoint} is damaged: {problem}")
    if averaged:
        return _export_average(checkpoint, out)
    if model_source(checkpoint) is None:
        return sharded_checkpoint.export(checkpoint, out)
    Path(out).mkdir(parents=True, exist_ok=True)
    for file in sorted(Path(checkpoint).iterdir()):
        if file.is_file() and file.name != STATE_FILE:
            shutil.copyfile(file, Path(out) / file.name)
    return Path(out)


def _export_average(checkpoint: Path, out: Path) -> Path:
    from gpt2lab.model.gpt import GPT

    average = (load_training_state(checkpoint).get("ema") or {}).get("average")
    if not average:
        raise CheckpointError(f"{checkpoint} holds no moving average of the weights: its run did not set optim.ema "
                              f"(export it without --ema)")
    model = GPT(read_config(checkpoint), init_weights=False)
    names = {name for name, _ in model.named_parameters()}
    if names != set(average) or any(average[n].shape != p.shape for n, p in model.named_parameters()):
        raise CheckpointError(f"{checkpoint}/{STATE_FILE}: its moving average does not match the model in "
                              f"config.json; the checkpoint is damaged")
    with torch.no_grad():
        for name, parameter in model.named_parameters():  # the tied head follows the embedding
            parameter.copy_(average[name])
    return save_model(model, out)


def rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)

