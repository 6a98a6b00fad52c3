"""Dashboards (gpt2lab/train/trackers.py): log.tensorboard writes what metrics.jsonl records into TensorBoard event
files (read back with TensorBoard's own reader); a missing package is one line before training starts. (W&B, whose
offline mode starts its own process, and neither package imported when off: tests/e2e/test_trackers.py; only rank 0
logging: tests/e2e/test_train_ddp.py.)"""

import sys

import pytest

from gpt2lab.cli import main
from gpt2lab.train import train

from tests.train_utils import TRAIN_KEYS, cli_flags, expected, quiet, tracked_config, write_dataset

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
