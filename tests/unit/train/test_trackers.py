"""Dashboards (gpt2lab/train/trackers.py): log.tensorboard writes what metrics.jsonl records into TensorBoard event
files (read back with TensorBoard's own reader); a missing package is one line before training starts. (W&B, whose
offline mode starts its own process, and neither package imported when off: tests/e2e/test_trackers.py; only rank 0
logging: tests/e2e/test_train_ddp.py.)"""

import sys

import pytest

from gpt2lab.cli import main
from gpt2lab.train import train

from tests.train_utils import TRAIN_KEYS, cli_flags, expected, quiet, tiny_config, tracked_config, write_dataset

pytest.importorskip("tensorboard", reason="the tracker tests need the tensorboard extra (test extra)")


def test_tensorboard_gets_every_metric_and_the_samples(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(tracked_config(tmp_path, log__tensorboard="true"), run, log=quiet)
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    wanted = {**TRAIN_KEYS, "val/loss": "val_loss", "hellaswag/acc": "hellaswag_acc",
              "hellaswag/acc_norm": "hellaswag_acc_norm"}
    assert set(wanted) <= set(scalars)
    for tag, key in wanted.items():
        logged = expected(run, key)
        assert sorted(scalars[tag]) == sorted(logged) and logged, tag
        for step, value in logged.items():  # event files hold float32
            assert scalars[tag][step] == pytest.approx(value, rel=1e-6), (tag, step)
    texts = {e.step: e.tensor_proto.string_val[0].decode() for e in events.Tensors("samples/text_summary")}
    samples = (run / "samples.txt").read_text()
    assert sorted(texts) == [3, 6]
    for text in texts.values():  # each sample block, as written to samples.txt (indented: shown verbatim)
        assert "\n".join(line[4:] for line in text.splitlines()) in samples


@pytest.mark.parametrize("key, module, extra", [
    ("log.tensorboard=true", "torch.utils.tensorboard", "tensorboard"),
    ("log.wandb=my-project", "wandb", "wandb"),
])
def test_a_missing_tracker_package_is_one_line_before_training(tmp_path, capsys, monkeypatch, key, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
    run = tmp_path / "run"
    code = main(["train", "--out", str(run), *cli_flags(write_dataset(tmp_path / "data")), "--set", key])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"needs the {extra} package, which is not installed: pip install 'gpt2lab[{extra}]'" in err
    assert not run.exists()  # nothing started


def test_a_resume_tells_tensorboard_to_drop_the_steps_after_the_checkpoint(tmp_path, monkeypatch):
    """A run that dies at step 5 with its last checkpoint at 3 logged steps 4 and 5 to TensorBoard; the resumed
    launch marks its events as starting over at step 4 (a SessionLog START at purge_step 4, which TensorBoard's
    readers honour by dropping the earlier launch's events from there), so the dashboard shows each step once,
    with the values of the run that continued: what metrics.jsonl keeps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    from gpt2lab.train.step import TrainStep

    run = tmp_path / "run"
    config = tiny_config(write_dataset(tmp_path / "data"), data__batch_size=2, schedule__max_steps=6,
                         checkpoint__every=3, log__tensorboard="true")
    real = TrainStep.__call__

    def dies_at_step_5(self, step, *batches_and_micro_steps):
        if step == 5 - 1:  # the index of the 5th step
            raise RuntimeError("the machine went down")
        return real(self, step, *batches_and_micro_steps)

    monkeypatch.setattr(TrainStep, "__call__", dies_at_step_5)
    with pytest.raises(RuntimeError, match="went down"):
        train(config, run, log=quiet)
    monkeypatch.setattr(TrainStep, "__call__", real)
    first_files = sorted((run / "tensorboard").iterdir())
    assert train(config, run, resume=True, log=quiet).step == 6

    second_files = [f for f in sorted((run / "tensorboard").iterdir()) if f not in first_files]
    assert len(second_files) == 1
    starts = [e.step for e in EventFileLoader(str(second_files[0])).Load()
              if e.HasField("session_log") and e.session_log.status == e.session_log.START]
    assert starts == [4]
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    logged = expected(run, "loss")
    assert sorted(logged) == [1, 2, 3, 4, 5, 6]
    assert {e.step: e.value for e in events.Scalars("train/loss")} == pytest.approx(logged, rel=1e-6)
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
