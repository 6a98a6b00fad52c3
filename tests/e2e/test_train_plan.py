"""`gpt2lab train --dry-run` takes the number of processes from torchrun's environment (each rank a real process)."""

import json

from tests.conftest import run_cli
from tests.train_utils import cli_flags, dry_run_json, write_dataset


def test_dry_run_takes_the_world_size_from_torchrun_or_plan_gpus(tmp_path, capsys):
    data = write_dataset(tmp_path / "data")
    flags = cli_flags(data, data__batch_size=2, data__total_batch_tokens=256)
    assert dry_run_json(capsys, *flags)["grad_accum"] == 8
    assert dry_run_json(capsys, *flags, "--plan-gpus", "4")["grad_accum"] == 2
    # as each of torchrun's 2 processes would run it (in subprocesses: a torchrun worker leaves with os._exit)
    torchrun = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    rank0 = run_cli("train", "--dry-run", "--json", *flags, env=torchrun)
    assert rank0.returncode == 0, rank0.stderr
    assert json.loads(rank0.stdout)["grad_accum"] == 4
    rank1 = run_cli("train", "--dry-run", "--json", *flags, env={**torchrun, "RANK": "1", "LOCAL_RANK": "1"})
    assert rank1.returncode == 0 and rank1.stdout == ""  # said once, by rank 0
