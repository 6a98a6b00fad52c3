"""Dashboards whose test starts processes: log.wandb logs what metrics.jsonl records to Weights & Biases (offline
here, through W&B's own wandb-core process; read back from the run's file) and --resume continues the same W&B run;
and neither dashboard package is imported when its tracker is off (a fresh process, so that nothing else imported
it). (TensorBoard, and a missing package: tests/unit/train/test_trackers.py.)"""

import json
import re
import struct
import subprocess
import sys
import time

import pytest

from gpt2lab.train import train
from gpt2lab.train.console import StopSignals

from tests.conftest import REPO
from tests.train_utils import TRAIN_KEYS, cli_flags, expected, quiet, tracked_config, write_dataset


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
    # One W&B process per launch, the same run. W&B names a run's folder by the second it started, and a launch in
    # the same second as the one before gets a "-1" suffix: order them by (second, suffix), whatever the timing.
    launches = {}
    for folder in (run / "wandb").glob("offline-run-*"):
        match = re.fullmatch(rf"offline-run-(\d{{8}}_\d{{6}})-{re.escape(run_id)}(?:-(\d+))?", folder.name)
        assert match, folder.name
        launches[(match[1], int(match[2] or 0))] = folder
    first, second = (launches[key] for key in sorted(launches))
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
