"""Training checkpoints: the model plus everything needed to continue exactly, and the `Checkpointer` that writes
them and restores training from one.

RUN/checkpoints/step_%08d/ (named by `RunDirectory`) = the model in Hugging Face format (config.json +
model.safetensors + GPT-2's tokenizer files: what `load_model(RUN)` and transformers read) + training_state.pt:

    optimizer, scaler     each one's state_dict(), the same on every rank (rank 0's is saved)
    loader, rng           a list of every rank's state, in rank order
    world_size, config    the number of processes and the TrainConfig (a dict) it was saved with
    step                  the number of steps done

written with torch.save and read back with torch.load(weights_only=True): tensors and plain containers only. The
directory is assembled under a temporary name and renamed when complete, so a kill at any moment leaves the
previous checkpoint intact and the half-written one invisible.

As in torchtitan, the trainer hands the Checkpointer its pieces of state by name, each an object with
`state_dict()` / `load_state_dict()`: another piece of state (a second optimizer, say) is one more entry, not
more checkpoint code. The step counter is one of them (`StepCounter`): it names the checkpoint directory too.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gpt2lab.runtime import distributed
from gpt2lab.storage.atomic import atomic_directory
from gpt2lab.errors import CheckpointError, first_line
from gpt2lab.hf.format import save_model
from gpt2lab.storage.run_directory import RunDirectory

STATE_FILE = "training_state.pt"


class Checkpointer:
    """Writes a run's checkpoints and restores training from one.

    states: the same on every rank (optimizer, grad scaler): rank 0's is saved, and loaded on every rank.
    rank_states: each rank's own: all ranks' are saved, a list in rank order, and `load_state_dict` receives the
        list to take what it needs from.
    Each process's RNG is saved the same way by the checkpointer itself: it is the process's global state, not an
    object of the trainer's.
    """

    def __init__(self, run: RunDirectory, model, ctx: distributed.DistContext, device: torch.device, *,
                 progress: StepCounter, states: dict, rank_states: dict, config: dict, keep: int, seed: int):
        self.run, self.model, self.ctx, self.device = run, model, ctx, device
        self.progress, self.states, self.rank_states = progress, {"step": progress, **states}, rank_states
        self.config, self.keep, self.seed = config, keep, seed

    def save(self) -> Path:
        """Every rank calls this (each rank's state is gathered); rank 0 writes the checkpoint of the step done."""
        mine = {name: state.state_dict() for name, state in self.rank_states.items()}
        mine["rng"] = rng_state(self.device)
        every_rank = distributed.all_gather_object(mine)
        path = self.run.checkpoint_dir(self.progress.step)
        if self.ctx.is_main:
            training_state = {name: state.state_dict() for name, state in self.states.items()}
            training_state.update({name: [rank[name] for rank in every_rank] for name in mine})
            training_state.update(world_size=self.ctx.world_size, config=self.config)
            save_checkpoint(self.run, self.model, training_state, self.keep)
        distributed.barrier()
        return path

    def load(self, checkpoint: Path) -> dict:
        """Restore every piece of state and this process's RNG from `checkpoint` (whose model the caller has
        loaded); returns the saved training state (`step`, `world_size`, ...)."""
        saved = load_training_state(checkpoint)
        for name, state in {**self.states, **self.rank_states}.items():
            state.load_state_dict(saved[name])
        self._restore_rng(saved["rng"], self.progress.step)
        return saved

    def _restore_rng(self, saved: list, step: int) -> None:
        """Rank r continues saved rank r's RNG stream; a rank the saved run did not have (more processes now) is
        seeded from runtime.seed, its rank and the step: deterministic, and not a replay of any rank's start.
        (The training step draws no random numbers today, no dropout: this keeps any code that would reproducible.)"""
        rank = self.ctx.rank
        if rank < len(saved):
            set_rng_state(saved[rank], self.device)
        else:
            torch.manual_seed(self.seed + rank + 1_000_003 * step)


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


def save_checkpoint(run: RunDirectory, model, training_state: dict, keep: int) -> Path:
    """Write the checkpoint of training_state["step"] atomically, then delete all but the newest `keep` complete
    checkpoints."""
    path = run.checkpoint_dir(training_state["step"])
    with atomic_directory(path) as tmp:
        save_model(model, tmp)
        torch.save(training_state, tmp / STATE_FILE)
    run.prune_checkpoints(keep)
    return path


def load_training_state(checkpoint: Path) -> dict:
    path = Path(checkpoint) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{checkpoint} has no {STATE_FILE}: it holds a model but cannot resume training "
                              f"(fine-tune from it with --init {checkpoint} instead)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} is unreadable ({first_line(e)}); delete that checkpoint "
                              f"directory to resume from the one before") from None


def rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
