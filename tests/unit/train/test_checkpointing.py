"""Checkpoints (gpt2lab/train/checkpointing.py): what a trainer checkpoint holds, and only the newest K are kept."""

import json
import shutil

import pytest
import torch

from gpt2lab.errors import CheckpointError, GPT2LabError
from gpt2lab.runtime.distributed import DistContext
from gpt2lab.storage.run_directory import RunDirectory
from gpt2lab.train import train
from gpt2lab.train.checkpointing import (Checkpointer, NonFiniteState, StepCounter, checkpoint_problem,
                                         export_checkpoint, resumable_checkpoint, resume_point)
from gpt2lab.train.config import OptimSection
from gpt2lab.train.optim import make_optimizer

from tests.conftest import tiny_gpt
from tests.train_utils import losses, quiet, tiny_config, write_dataset


def checkpointer(run_dir, model, step=7) -> Checkpointer:
    optimizer = make_optimizer(model, OptimSection(), torch.device("cpu"))
    return Checkpointer(RunDirectory(run_dir), model, optimizer, DistContext(), torch.device("cpu"),
                        progress=StepCounter(step), states={}, rank_states={}, config={"note": "state"}, keep=2,
                        seed=0)

MODEL_FILES = ["config.json", "model.safetensors"]
TOKENIZER_FILES = ["merges.txt", "tokenizer_config.json", "vocab.json"]


def test_trainer_checkpoint_has_the_files(tmp_path):
    model = tiny_gpt(vocab_size=50304, block_size=32)
    path = checkpointer(tmp_path, model).save()
    assert sorted(p.name for p in path.iterdir()) == sorted([*MODEL_FILES, *TOKENIZER_FILES, "training_state.pt"])
    state = torch.load(path / "training_state.pt", weights_only=True)
    assert state["step"] == 7 and state["config"] == {"note": "state"} and "optimizer" in state
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000007"]  # no temporaries left
    assert json.loads((path / "tokenizer_config.json").read_text())["model_max_length"] == 32


def test_only_the_newest_k_checkpoints_are_kept(tmp_path):
    data = write_dataset(tmp_path / "data")
    train(tiny_config(data, schedule__max_steps=7, checkpoint__every=2, checkpoint__keep=2), tmp_path / "run",
          log=quiet)
    assert [step for step, _ in RunDirectory(tmp_path / "run").checkpoints()] == [6, 7]  # 2 and 4 were pruned
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_00000006", "step_00000007"]


def test_non_finite_weights_are_never_saved(tmp_path):
    model = tiny_gpt()
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteState, match="NaN or infinite by step 7; not saved"):
        checkpointer(tmp_path, model).save()
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_non_finite_optimizer_state_is_never_saved(tmp_path):
    model = tiny_gpt()
    saver = checkpointer(tmp_path, model)
    model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))[1].backward()
    saver.optimizer.step()
    next(iter(saver.optimizer.state.values()))["exp_avg_sq"].fill_(float("nan"))
    with pytest.raises(NonFiniteState):
        saver.save()


def run_with_checkpoints(tmp_path, steps=6, every=2):
    data = write_dataset(tmp_path / "data")
    config = tiny_config(data, schedule__max_steps=steps, checkpoint__every=every, checkpoint__keep=10)
    train(config, tmp_path / "run", log=quiet)
    return config, RunDirectory(tmp_path / "run")


@pytest.mark.parametrize("damage, problem", [
    (lambda c: (c / "training_state.pt").unlink(), "training_state.pt is missing"),
    (lambda c: (c / "training_state.pt").write_bytes((c / "training_state.pt").read_bytes()[:100]), "unreadable"),
    (lambda c: (c / "model.safetensors").unlink(), "model.safetensors is missing"),
    (lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:-10]), "truncated"),
], ids=["no-state", "cut-state", "no-weights", "cut-weights"])
def test_a_damaged_newest_checkpoint_is_skipped_and_named(tmp_path, damage, problem):
    _, run = run_with_checkpoints(tmp_path)
    newest = run.latest_checkpoint()
    assert checkpoint_problem(newest) is None
    damage(newest)
    assert problem in checkpoint_problem(newest)
    said = []
    assert resumable_checkpoint(run, log=said.append) == run.checkpoint_dir(4)
    assert newest.name in said[0] and problem in said[0]
    assert newest.exists()  # left in place


def test_resume_falls_back_to_the_newest_good_checkpoint_and_continues_exactly(tmp_path):
    config, run = run_with_checkpoints(tmp_path)
    before = losses(run.path)
    (run.latest_checkpoint() / "model.safetensors").unlink()
    train(config, run.path, resume=True, log=quiet)
    assert losses(run.path) == before


def test_every_checkpoint_damaged_is_refused_in_one_line(tmp_path):
    _, run = run_with_checkpoints(tmp_path, steps=2)
    for _, checkpoint in run.checkpoints():
        (checkpoint / "training_state.pt").unlink()
    with pytest.raises(CheckpointError, match="every checkpoint of .* is damaged .*step_00000002: training_state"):
        resumable_checkpoint(run, log=quiet)


def test_the_resume_point_of_a_run_directory(tmp_path):
    config, run = run_with_checkpoints(tmp_path)
    checkpoint, resumed, starts_over = resume_point(run, config, resume=True, overwrite=False, log=quiet)
    assert checkpoint == run.checkpoint_dir(6) and resumed == config and not starts_over
    with pytest.raises(GPT2LabError, match="already holds a training run; pass --resume"):
        resume_point(run, config, resume=False, overwrite=False, log=quiet)
    assert resume_point(run, config, resume=False, overwrite=True, log=quiet)[:2] == (None, config)
    # the checkpoint's own saved config decides, not RUN/config.toml (which a user can edit)
    changed = tiny_config(tmp_path / "data", schedule__max_steps=6, checkpoint__every=2, checkpoint__keep=10,
                          model__n_layer=3)
    with pytest.raises(GPT2LabError, match=r"config differs from its checkpoint's in model.n_layer \(2 -> 3\)"):
        resume_point(run, changed, resume=True, overwrite=False, log=quiet)


def test_a_run_killed_before_its_first_checkpoint_starts_over_with_or_without_resume(tmp_path):
    config, run = run_with_checkpoints(tmp_path)
    shutil.rmtree(run.checkpoints_dir)  # as if killed (kill -9) before the first checkpoint
    for resume in (False, True):
        said = []
        assert resume_point(run, config, resume=resume, overwrite=False, log=said.append) == (None, config, True)
        assert "no complete checkpoint to resume from: starting from step 0" in said[0]
    before = losses(run.path)
    train(config, run.path, log=quiet)
    assert losses(run.path) == before  # the lost steps' metrics are gone, the new ones the same numbers


def test_export_of_a_whole_checkpoint_is_its_hf_files(tmp_path):
    _, run = run_with_checkpoints(tmp_path, steps=2)
    out = export_checkpoint(run.latest_checkpoint(), tmp_path / "exported")
    assert sorted(p.name for p in out.iterdir()) == sorted([*MODEL_FILES, *TOKENIZER_FILES])


def test_each_rank_that_joins_on_resume_gets_its_own_deterministic_rng_stream():
    """Resumed with more processes than were saved: ranks the checkpoint has continue their saved stream exactly;
    a rank that joins draws from a stream of its own (not another joining rank's, not a replay of its fresh start,
    the same on every resume at that step), as a dropout-like draw would see it."""
    from types import SimpleNamespace

    def draws_after_restore(rank, saved, step, world_size=4):
        me = SimpleNamespace(ctx=DistContext(rank=rank, world_size=world_size), device=torch.device("cpu"), seed=1337)
        with torch.random.fork_rng(devices=[]):
            Checkpointer._restore_rng(me, saved, step)
            return torch.rand(8)

    with torch.random.fork_rng(devices=[]):
        saved = []
        for rank in range(2):  # what a 2-process run saved: each rank's stream, some draws in
            torch.manual_seed(1337 + rank)
            torch.rand(5)
            saved.append({"cpu": torch.get_rng_state()})
        continued = []
        for state in saved:
            torch.set_rng_state(state["cpu"])
            continued.append(torch.rand(8))
    for rank in range(2):
        assert torch.equal(draws_after_restore(rank, saved, step=10), continued[rank])
    joined = {rank: draws_after_restore(rank, saved, step=10) for rank in (2, 3)}
    assert not torch.equal(joined[2], joined[3])  # each joining rank its own stream
    assert torch.equal(joined[2], draws_after_restore(2, saved, step=10))  # deterministic
    assert not torch.equal(draws_after_restore(2, saved, step=20), joined[2])  # and not the same at every resume
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1337 + 2)  # rank 2's stream when a run starts with 4 processes
        fresh_start = torch.rand(8)
    assert not torch.equal(joined[2], fresh_start)
    assert all(not torch.equal(joined[r], c) for r in (2, 3) for c in continued)
