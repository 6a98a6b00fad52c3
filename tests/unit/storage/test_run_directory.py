"""A training run's directory (gpt2lab/storage/run_directory.py): its complete checkpoints in step order, which one a
launch resumes from (and the refusal to mix two runs), pruning, --overwrite of its own files only, and metrics.jsonl
cut back to a checkpoint."""

import json

import pytest

from gpt2lab.errors import GPT2LabError
from gpt2lab.storage.run_directory import RunDirectory, read_metrics, truncate_metrics


def checkpoint(run, step, complete=True):
    path = run.checkpoint_dir(step)
    path.mkdir(parents=True)
    (path / "model.safetensors").write_text("weights")
    if complete:  # config.json is written last: a checkpoint without it was interrupted
        (path / "config.json").write_text("{}")
    return path


def test_only_complete_checkpoints_are_listed_in_step_order(tmp_path):
    run = RunDirectory(tmp_path / "run")
    assert run.checkpoints() == [] and run.latest_checkpoint() is None
    for step in (10, 9, 100):
        checkpoint(run, step)
    checkpoint(run, 200, complete=False)
    (run.checkpoints_dir / ".tmp-step_00000300.x1y2").mkdir()  # being written
    (run.checkpoints_dir / "notes").mkdir()
    assert run.checkpoint_dir(9).name == "step_00000009"
    assert [step for step, _ in run.checkpoints()] == [9, 10, 100]
    assert run.latest_checkpoint() == run.checkpoint_dir(100)


def test_pruning_keeps_the_newest_and_a_stale_temporary_is_removed(tmp_path):
    run = RunDirectory(tmp_path / "run")
    for step in (2, 4, 6, 8):
        checkpoint(run, step)
    (run.checkpoints_dir / ".tmp-step_00000010.abc").mkdir()
    run.prune_checkpoints(keep=3)
    assert [step for step, _ in run.checkpoints()] == [4, 6, 8]
    run.prune_checkpoints(keep=1)
    assert [step for step, _ in run.checkpoints()] == [8]
    run.remove_stale_temporaries()
    assert sorted(p.name for p in run.checkpoints_dir.iterdir()) == ["step_00000008"]


def test_a_directory_holds_a_run_once_any_of_the_run_s_files_is_there(tmp_path):
    """What decides, with the checkpoints (train/checkpointing.resume_point), whether a launch may start here."""
    run = RunDirectory(tmp_path / "run")
    assert not run.holds_run()
    run.path.mkdir()
    (run.path / "my-notes.md").write_text("mine")
    assert not run.holds_run()  # a user's own files are not a run
    run.metrics_file.write_text('{"step": 1, "loss": 5.0}\n')  # a run was started here
    assert run.holds_run()
    run.check_is_directory()
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(GPT2LabError, match="is a file; choose another --out"):
        RunDirectory(tmp_path / "file").check_is_directory()


def test_overwrite_removes_the_run_s_own_files_only(tmp_path):
    run = RunDirectory(tmp_path / "run")
    checkpoint(run, 3)
    run.metrics_file.write_text('{"step": 1, "loss": 5.0}\n')
    run.samples_file.write_text("old samples")
    run.tensorboard_dir.mkdir()
    (run.path / "wandb").mkdir()
    run.wandb_id_file.write_text("abc123")
    (run.path / "my-notes.md").write_text("mine")
    run.prepare("[optim]\nlr = 0.1\n", overwrite=True, resumed_step=None)
    assert sorted(p.name for p in run.path.iterdir()) == ["config.toml", "my-notes.md"]
    assert run.config_file.read_text() == "[optim]\nlr = 0.1\n"


def test_a_resume_forgets_the_steps_logged_after_its_checkpoint(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.path.mkdir()
    records = [{"step": s, "loss": 10.0 - s} for s in range(1, 8)] + [{"step": 4, "val_loss": 6.0}]
    run.metrics_file.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 8, "lo')  # cut by a kill
    assert [r["step"] for r in read_metrics(run.metrics_file)] == [1, 2, 3, 4, 5, 6, 7, 4]  # the cut line skipped
    run.prepare("", overwrite=False, resumed_step=4)
    assert read_metrics(run.metrics_file) == [r for r in records if r["step"] <= 4]
    truncate_metrics(tmp_path / "no-such-file.jsonl", after_step=1)  # nothing logged yet: nothing to cut
    assert not (tmp_path / "no-such-file.jsonl").exists()
