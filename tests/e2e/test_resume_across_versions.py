"""A run directory written by an earlier gpt2lab resumes with this one, with bit-identical losses: the checkpoint
format (HF model + training_state.pt), config.toml and metrics.jsonl are promises, not implementation details.

The earlier gpt2lab is this repository's own history: commit 17499c0, the last one before the code moved into role
packages (model/, hf/, sampling/, runtime/, storage/, tools/) and the training step got one owner."""

import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.train_utils import cli_flags, losses, write_dataset

BEFORE_THE_REORGANISATION = "17499c0"


def earlier_gpt2lab(tmp_path):
    """The gpt2lab package of that commit, extracted into tmp_path (skips where the history is not there)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the repository's git history (a clone, not an sdist)")
    found = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{BEFORE_THE_REORGANISATION}^{{commit}}"])
    if found.returncode != 0:
        pytest.skip(f"commit {BEFORE_THE_REORGANISATION} is not in this clone (shallow?)")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", BEFORE_THE_REORGANISATION, "gpt2lab"],
                             capture_output=True, check=True).stdout
    old = tmp_path / "old-gpt2lab"
    old.mkdir()
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    return old


def gpt2lab(code_dir, *args):
    env = {"PYTHONPATH": str(code_dir), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    import os

    env = {**os.environ, **env}
    result = subprocess.run([sys.executable, "-m", "gpt2lab", *map(str, args)], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_run_written_before_resumes_after_with_bit_identical_losses(tmp_path, optimizer):
    old = earlier_gpt2lab(tmp_path)
    data = write_dataset(tmp_path / "data")
    run = tmp_path / "run"
    flags = cli_flags(data, optim__name=optimizer, schedule__name="wsd", schedule__max_steps=8, checkpoint__every=4,
                      data__batch_size=2)  # 2 micro-steps per step
    gpt2lab(old, "train", "--out", run, *flags)  # the earlier code: 8 steps, checkpoints at 4 and 8
    before = losses(run)
    assert sorted(before) == list(range(1, 9))
    shutil.rmtree(run / "checkpoints" / "step_00000008")

    gpt2lab(REPO, "train", "--out", run, "--resume")  # this code, from the earlier code's step-4 checkpoint
    assert losses(run) == before  # steps 5-8 computed again, bit for bit
