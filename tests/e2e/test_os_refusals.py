"""Outputs the OS refuses (no such directory, read-only filesystem, full disk) end every command with one line
naming the path and the reason, exit code 2, nothing half-written, and the previous checkpoint intact.

Read-only and full disks are real: small tmpfs mounts where this machine lets the test mount (CI runs as root);
elsewhere those cases are skipped and the in-process tests still cover the mechanism (a simulated disk filling up
mid-checkpoint: tests/unit/train/test_trainer.py; opaque writer failures: tests/unit/storage/test_atomic.py). A
file-size limit (`ulimit -f`, as a FAT32 disk's 4 GiB limit) is real for any user: it needs no mount."""

import resource
import subprocess

import pytest

from gpt2lab.model.gpt import load_model

from tests.conftest import run_cli
from tests.train_utils import cli_flags, write_dataset

UNWRITABLE = "/proc/gpt2lab-test/out"  # /proc refuses new entries, whoever runs the tests


def _mount_tmpfs(path, options):
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not root'})")
    return path


@pytest.fixture
def mounts():
    mounted = []

    def mount(path, options):
        mounted.append(_mount_tmpfs(path, options))
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def _one_line(result, *needles):
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


@pytest.fixture(scope="module")
def run_with_metrics(tmp_path_factory):
    run = tmp_path_factory.mktemp("plotted")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n{"step": 2, "loss": 4.0}\n')
    return run


def test_every_command_refuses_an_uncreatable_output_in_one_line(tmp_path, tiny_model_dir, run_with_metrics):
    data = write_dataset(tmp_path / "data")
    (tmp_path / "doc.txt").write_text("Some words to tokenise.\n")
    cases = [
        ("train", "--out", UNWRITABLE, *cli_flags(data, schedule__max_steps=1)),
        ("prepare", tmp_path / "doc.txt", "--out", UNWRITABLE),
        ("plot", run_with_metrics, "--out", f"{UNWRITABLE}/loss.png"),
        ("inspect", tiny_model_dir, "--plots", UNWRITABLE),
        ("bench", "train", "--model", "tiny", "--no-compare", "--json", f"{UNWRITABLE}/bench.json"),
    ]
    for args in cases:
        result = run_cli(*args)
        _one_line(result, f"gpt2lab {args[0]}: error: cannot write {UNWRITABLE}", "No such file or directory")
        assert result.stdout == "", f"{args[0]} did work before refusing: {result.stdout[:200]}"


def test_read_only_filesystem(tmp_path, mounts, run_with_metrics):
    ro = mounts(tmp_path / "ro", "ro,size=1m")
    data = write_dataset(tmp_path / "data")
    _one_line(run_cli("train", "--out", ro / "run", *cli_flags(data, schedule__max_steps=1)),
              f"cannot write {ro / 'run'}: Read-only file system")
    _one_line(run_cli("plot", run_with_metrics, "--out", ro / "loss.png"),
              f"cannot write {ro / 'loss.png'}: Read-only file system")


def test_disk_full_mid_run_stops_with_the_last_good_checkpoint(tmp_path, mounts):
    """Each checkpoint of this model takes ~21 MB (weights, AdamW moments, tokenizer files): a 30 MB disk holds
    the first and fills up during the second."""
    disk = mounts(tmp_path / "disk", "size=30m")
    data = write_dataset(tmp_path / "data")
    run = disk / "run"
    flags = cli_flags(data, schedule__max_steps=6, checkpoint__every=2, checkpoint__keep=1)
    result = run_cli("train", "--out", run, "--no-progress", *flags)
    _one_line(result, f"cannot write {run / 'checkpoints' / 'step_00000004'}: No space left on device",
              f"the last good checkpoint is {run / 'checkpoints' / 'step_00000002'}", "--resume")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002"]  # no half-written one
    load_model(run)  # the survivor is complete and loads

    subprocess.run(["mount", "-o", "remount,size=200m", str(disk)], check=True)  # the user frees space
    resumed = run_cli("train", "--out", run, "--resume", "--no-progress", *flags)
    assert resumed.returncode == 0, resumed.stderr
    assert "step_00000002" in resumed.stdout and "done: step 6" in resumed.stdout


def test_disk_full_during_prepare_keeps_nothing_half_written(tmp_path, mounts):
    disk = mounts(tmp_path / "disk", "size=64k")
    (tmp_path / "doc.txt").write_text("All the world's a stage, and all the men and women merely players. " * 4000)
    out = disk / "data"
    result = run_cli("prepare", tmp_path / "doc.txt", "--out", out, "--val-docs", "0", "--no-progress")
    _one_line(result, f"disk full while writing {out / 'train_000000.bin'}")
    assert not out.exists()  # no finished shard: the half-written one is removed, then the empty directory


def test_file_size_limit_refuses_the_checkpoint_in_one_line(tmp_path):
    """Under a file-size limit (any user may set one) the checkpoint's weights (6.5 MB) fit and its training state
    (13 MB, written by torch.save from C++) does not: the refusal is the OS's "File too large" by name, not torch's
    "unexpected pos", and nothing half-written is left."""
    data = write_dataset(tmp_path / "data")
    run = tmp_path / "run"
    limit = 8 << 20

    def limit_file_size():  # Python ignores SIGXFSZ, so the write that passes the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = run_cli("train", "--out", run, "--no-progress", *cli_flags(data, schedule__max_steps=2,
                                                                        checkpoint__every=2),
                     preexec_fn=limit_file_size)
    _one_line(result, f"cannot write {run / 'checkpoints' / 'step_00000002'}: File too large", "ulimit -f")
    assert list((run / "checkpoints").iterdir()) == []  # neither a checkpoint nor its temporary directory
