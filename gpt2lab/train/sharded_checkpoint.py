"""Sharded checkpoints for FSDP: the model and optimizer state written with `torch.distributed.checkpoint` (DCP),
each rank its own part, no rank ever holding the whole optimizer state.

    RUN/checkpoints/step_%08d/sharded/   DCP's files (one per rank) and its .metadata: {"model", "optimizer"},
                                         keyed by parameter name (FQN), so any number of processes, sharded or not,
                                         can load them
    RUN/checkpoints/step_%08d/config.json, training_state.pt   as in every checkpoint (checkpointing.py), without
                                         the optimizer; the final checkpoint also holds the whole model in HF format

Loading reshards: a checkpoint of 2 FSDP processes resumes on 1 or 4, or under DDP (whole tensors on each rank),
and a DDP checkpoint's optimizer state (whole, keyed by position) resumes under FSDP (`load_whole_optimizer`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from gpt2lab.errors import CheckpointError, first_line

SHARDED_DIR = "sharded"


def optimizers_of(optimizer) -> list:
    """The torch optimizers behind ours (a CombinedOptimizer is Muon + AdamW), as DCP's state-dict helpers take them."""
    return list(getattr(optimizer, "optimizers", {"": optimizer}).values())


def is_sharded(checkpoint) -> bool:
    return (Path(checkpoint) / SHARDED_DIR).is_dir()


def save_sharded(directory: Path, model, optimizer) -> None:
    """Every rank calls this: DCP writes each rank's shards, then rank 0 the metadata."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizers_of(optimizer))
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=Path(directory) / SHARDED_DIR)


def load_sharded(checkpoint: Path, model, optimizer=None) -> None:
    """Every rank calls this: the model (and optimizer) state of `checkpoint`, resharded to however the model is
    held now (FSDP on any number of processes, or whole)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_state_dict, set_model_state_dict,
                                                         set_state_dict)

    path = Path(checkpoint) / SHARDED_DIR
    problem = sharded_problem(checkpoint)
    if problem:
        raise CheckpointError(f"{checkpoint} is damaged: {problem}")
    try:
        if optimizer is None:
            state = {"model": get_model_state_dict(model)}
            with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
                warnings.filterwarnings("ignore", message="torch.distributed is disabled")
                dcp.load(state, checkpoint_id=path)
            set_model_state_dict(model, state["model"])
            return
        optimizers = optimizers_of(optimizer)
        model_state, optimizer_state = get_state_dict(model, optimizers)
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, checkpoint_id=path)
        set_state_dict(model, optimizers, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    except CheckpointError:
        raise
    except Exception as e:  # DCP's CheckpointException for unreadable or mismatched files
        raise CheckpointError(f"cannot load the sharded state of {checkpoint} ({first_line(e)}); it may be damaged: "
                              f"resume from the checkpoint before it") from None


def sharded_problem(checkpoint) -> str | None:
    """Why the sharded state of `checkpoint` cannot be loaded (no metadata, a rank's file missing or short), or
    None when every file DCP's metadata names is there, whole."""
    from torch.distributed.checkpoint import FileSystemReader

    path = Path(checkpoint) / SHARDED_DIR
    try:
        metadata = FileSystemReader(str(path)).read_metadata()
    except Exception as e:
        return f"its sharded metadata is unreadable ({first_line(e)})"
    ends = {}
    for info in (metadata.storage_data or {}).values():
        ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
    for name, end in sorted(ends.items()):
        file = path / name
        if not file.is_file():
            return f"{SHARDED_DIR}/{name} (one rank's part) is missing"
        if file.stat().st_size < end:
            return f"{SHARDED_DIR}/{name} is truncated ({file.stat().st_size} of {end} bytes)"
    return None


def whole_model_state(model) -> dict:
    """Every rank calls this; rank 0 gets the whole weights on the CPU (the others an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_whole_optimizer(model, optimizer, saved: dict) -> None:
    """A whole optimizer state as torch saves it (params by position in each group: a DDP checkpoint) into the
    optimizer of an FSDP model: by parameter name, then sharded by DCP. The optimizer was made as the saved one
    was (make_optimizer: the same groups in the same order)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = {id(p): name for name, p in model.named_parameters()}
    combined = getattr(optimizer, "optimizers", None)
    parts = [(optimizer, saved)] if combined is None else [(combined[k], saved[k]) for k in combined]
    by_name = {"state": {}, "param_groups": []}
    for torch_optimizer, state in parts:
        for group, saved_group in zip(torch_optimizer.param_groups, state["param_groups"]):
            fqns = [names[id(p)] for p in group["params"]]
            by_name["param_groups"].append({**saved_group, "params": fqns})
            for fqn, index in zip(fqns, saved_group["params"]):
                if index in state["state"]:
                    by_name["state"][fqn] = state["state"][index]
    set_optimizer_state_dict(model, optimizers_of(optimizer), by_name, options=StateDictOptions(full_state_dict=True))


def export(checkpoint: Path, out: Path) -> Path:
    """A checkpoint's model as a plain Hugging Face directory, on one process: the sharded state loaded into a
    whole model on the CPU, written as `save_pretrained` writes it."""
    from gpt2lab.hf.format import read_config
    from gpt2lab.model.gpt import GPT

    model = GPT(read_config(checkpoint), init_weights=False)
    load_sharded(checkpoint, model)
    model.save_pretrained(out)
    return Path(out)
