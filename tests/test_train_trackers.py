"""Dashboards: log.tensorboard writes what metrics.jsonl records into TensorBoard event files (read back with
TensorBoard's own reader); log.wandb logs it to Weights & Biases (offline here, read back from the run's file)
and --resume continues the same W&B run; a missing package is one line before training starts; neither is
imported when off. (Only rank 0 logging is checked in test_train_ddp.py, under torchrun.)"""

import json
import struct
import subprocess
import sys
import time

import pytest

from conftest import REPO
from gpt2lab.cli import main
from gpt2lab.train import train
from gpt2lab.train.console import StopSignals
from test_train_loop import metrics, quiet, write_hellaswag
from train_utils import cli_flags, tiny_config, write_dataset

pytest.importorskip("tensorboard", reason="the tracker tests need the tensorboard extra (test extra)")

# train/* tags <- the record keys of metrics.jsonl
TRAIN_KEYS = {"train/loss": "loss", "train/lr": "lr", "train/grad_norm": "grad_norm",
              "train/tokens_per_s": "tokens_per_s", "train/ms_per_step": "ms_per_step"}


def tracked_config(tmp_path, **changes):
    data = write_dataset(tmp_path / "data")
    examples = write_hellaswag(tmp_path / "hellaswag.jsonl")
    return tiny_config(data, data__batch_size=2, schedule__max_steps=6, eval__val_every=3, eval__sample_every=3,
                       eval__sample_count=1, eval__sample_tokens=8, eval__hellaswag_every=3,
                       eval__hellaswag_data=examples, checkpoint__every=3, **changes)


def expected(run, key) -> dict[int, float]:
    return {r["step"]: r[key] for r in metrics(run) if key in r}


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


def read_wandb_history(run_file) -> list[dict]:
    """The history rows of an offline W&B run file (`run-ID.wandb`): a LevelDB-style log of protobuf records,
    32 KiB blocks of chunks with a 7-byte header (crc, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data, rows, pending, pos, block = run_file.read_bytes(), [], b"", 7, 32768  # 7: the file's own header
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if length == 0 and kind == 0:  # the end of a block is padding
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


def test_wandb_offline_gets_the_metrics_and_resume_continues_the_same_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the W&B test needs the wandb extra (test extra)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(name, raising=False)
    run = tmp_path / "run"
    config = tracked_config(tmp_path, log__wandb="gpt2lab-tests", log__wandb_run_name="tiny")
    # stop after step 4 as Ctrl-C would (a checkpoint at 4), then resume to step 6
    real = StopSignals.requested
    monkeypatch.setattr(StopSignals, "requested", lambda self: self.current_step() == 4 or real(self))
    assert train(config, run, log=quiet).step == 4
    monkeypatch.setattr(StopSignals, "requested", real)
    assert train(config, run, resume=True, log=quiet).step == 6

    run_id = (run / "wandb_run_id").read_text().strip()
    first, second = sorted((run / "wandb").glob("offline-run-*"))  # one W&B process per launch, the same run
    assert first.name.endswith(f"-{run_id}") and second.name.endswith(f"-{run_id}")
    # W&B's own process writes the file; under load its last records can land just after finish() returns
    deadline = time.monotonic() + 60
    while True:
        history = [row for d in (first, second) for row in read_wandb_history(d / f"run-{run_id}.wandb")]
        if {row["step"] for row in history if "train/loss" in row} == set(range(1, 7)) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for tag, key in {**TRAIN_KEYS, "val/loss": "val_loss", "hellaswag/acc_norm": "hellaswag_acc_norm"}.items():
        logged = {row["step"]: row[tag] for row in history if tag in row}
        assert logged == pytest.approx(expected(run, key), rel=1e-12), tag
    assert sorted(row["step"] for row in history if "train/loss" in row) == [1, 2, 3, 4, 5, 6]
    samples = [row["step"] for row in history if row.get("samples/_type") == "table-file"]  # a table, by reference
    assert samples == [3, 6]
    table = json.loads(next((second / "files").rglob("*.table.json")).read_text())
    assert table["columns"] == ["step", "text"] and table["data"][0][0] == 6
    assert table["data"][0][1] in (run / "samples.txt").read_text()


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


def test_trackers_are_not_imported_when_off(tmp_path):
    data = write_dataset(tmp_path / "data")
    flags = cli_flags(data, schedule__max_steps=2, eval__sample_every=1)
    code = ("import sys; from gpt2lab.cli import main; code = main(sys.argv[1:]); "
            "print([m for m in ('wandb', 'tensorboard', 'torch.utils.tensorboard') if m in sys.modules]); "
            "sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code, "train", "--out", str(tmp_path / "run"), *flags],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
