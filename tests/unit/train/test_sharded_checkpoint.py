"""Sharded checkpoints (gpt2lab/train/sharded_checkpoint.py), in-process with FSDP2 over a one-process gloo group:
the state round-trips into a sharded or a whole model, a whole optimizer state goes into a sharded optimizer by
parameter name, damage is named, and export writes the whole model. (Several processes: tests/e2e/test_train_fsdp.py.)"""

import pytest
import torch

from gpt2lab.errors import CheckpointError
from gpt2lab.model.gpt import GPT, load_model
from gpt2lab.train import sharded_checkpoint
from gpt2lab.train.config import OptimSection
from gpt2lab.train.optim import make_optimizer
from gpt2lab.train.parallel import ParallelModel
from gpt2lab.train.step import TrainStep, repeat

from tests.train_utils import one_process_group, tiny_sharded

CPU = torch.device("cpu")


def trained_step(parallel, optimizer_name="adamw"):
    optimizer = make_optimizer(parallel.raw, OptimSection(name=optimizer_name), CPU)
    x = torch.randint(0, 128, (2, 17), generator=torch.Generator().manual_seed(1))
    TrainStep(parallel, optimizer, device=CPU, grad_clip=1.0)(0, repeat((x[:, :-1], x[:, 1:])))
    return optimizer


def whole_state(model) -> dict:
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("optimizer_name", ["adamw", "muon"])
def test_a_sharded_checkpoint_round_trips_into_a_sharded_model_and_a_whole_one(tmp_path, optimizer_name):
    with one_process_group():
        parallel, _ = tiny_sharded()
        optimizer = trained_step(parallel, optimizer_name)
        sharded_checkpoint.save_sharded(tmp_path, parallel.raw, optimizer)
        assert sharded_checkpoint.is_sharded(tmp_path) and sharded_checkpoint.sharded_problem(tmp_path) is None
        saved_weights = whole_state(parallel.raw)
        saved_moments = [whole_state_of(t) for t in optimizer_tensors(optimizer)]

        again, _ = tiny_sharded(seed=5)  # other weights, a fresh optimizer
        fresh = make_optimizer(again.raw, OptimSection(name=optimizer_name), CPU)
        sharded_checkpoint.load_sharded(tmp_path, again.raw, fresh)
        assert all(torch.equal(saved_weights[k], v) for k, v in whole_state(again.raw).items())
        assert all(torch.equal(a, whole_state_of(b)) for a, b in zip(saved_moments, optimizer_tensors(fresh)))

    whole = GPT(again.raw.config, init_weights=False)  # no process group: one process, whole tensors
    sharded_checkpoint.load_sharded(tmp_path, whole)
    assert all(torch.equal(saved_weights[k], v) for k, v in whole.state_dict().items())


def optimizer_tensors(optimizer):
    for torch_optimizer in sharded_checkpoint.optimizers_of(optimizer):
        for state in torch_optimizer.state.values():
            yield from (v for k, v in sorted(state.items()) if isinstance(v, torch.Tensor) and v.dim())


def whole_state_of(tensor):
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def test_a_whole_optimizer_state_goes_into_a_sharded_optimizer_by_parameter_name():
    """A DDP checkpoint's optimizer state (params by position) resumed under FSDP."""
    with one_process_group():
        parallel, whole = tiny_sharded()
        plain = ParallelModel(whole)
        plain_optimizer = trained_step(plain, "muon")
        sharded_optimizer = make_optimizer(parallel.raw, OptimSection(name="muon"), CPU)
        sharded_checkpoint.load_whole_optimizer(parallel.raw, sharded_optimizer, plain_optimizer.state_dict())
        for a, b in zip(optimizer_tensors(plain_optimizer), optimizer_tensors(sharded_optimizer)):
            assert torch.equal(a, whole_state_of(b))


def test_damage_is_named_and_refused(tmp_path):
    with one_process_group():
        parallel, _ = tiny_sharded()
        sharded_checkpoint.save_sharded(tmp_path, parallel.raw, trained_step(parallel))
    shard = next((tmp_path / "sharded").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-8])
    assert "is truncated" in sharded_checkpoint.sharded_problem(tmp_path)
    shard.unlink()
    assert f"{shard.name} (one rank's part) is missing" in sharded_checkpoint.sharded_problem(tmp_path)
    with pytest.raises(CheckpointError, match="is damaged: .*missing"):
        sharded_checkpoint.load_sharded(tmp_path, GPT(parallel.raw.config))
    (tmp_path / "sharded" / ".metadata").unlink()
    assert "metadata is unreadable" in sharded_checkpoint.sharded_problem(tmp_path)


def test_export_writes_the_whole_model_as_a_plain_hf_directory(tmp_path):
    from gpt2lab.hf.format import write_config

    with one_process_group():
        parallel, _ = tiny_sharded()
        sharded_checkpoint.save_sharded(tmp_path / "checkpoint", parallel.raw, trained_step(parallel))
        weights = whole_state(parallel.raw)
    write_config(parallel.raw.config, tmp_path / "checkpoint")  # as every checkpoint has
    sharded_checkpoint.export(tmp_path / "checkpoint", tmp_path / "hf")
    exported = load_model(tmp_path / "hf").state_dict()
    assert exported.keys() == weights.keys() and all(torch.equal(exported[k], weights[k]) for k in weights)
