"""`gpt2lab train` in-process (gpt2lab/cli/train.py): bad input is one clear stderr line, exit code 2, no traceback,
nothing lost (Muon's settings included); sizes beyond the memory are refused up front; --init fine-tunes a saved
model. (In real processes, the demo preset: tests/e2e/test_train.py; the config: tests/unit/train/test_config.py.)"""

import pytest
import torch

from gpt2lab.model.gpt import load_model
from gpt2lab.storage.run_directory import RunDirectory
from gpt2lab.train import train

from tests.train_utils import cli_flags, losses, one_line_error, run_main, tiny_config, write_dataset


def test_bad_inputs_in_process(tmp_path, capsys):
    data = write_dataset(tmp_path / "data")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(run_main(capsys, "train", "--out", tmp_path / "r", *cli_flags(empty)), "no manifest.json")
    foreign = write_dataset(tmp_path / "foreign", tokenizer="llama")
    one_line_error(run_main(capsys, "train", "--out", tmp_path / "r", *cli_flags(foreign)), "another tokenizer")
    one_line_error(run_main(capsys, "train", "--out", tmp_path / "r", *cli_flags(data, model__vocab_size=1000)),
                   "model.vocab_size is 1000")
    fresh = run_main(capsys, "train", "--out", tmp_path / "fresh", "--resume", *cli_flags(data, schedule__max_steps=2))
    assert fresh.returncode == 0 and "no complete checkpoint to resume from: starting from step 0" in fresh.stdout
    one_line_error(run_main(capsys, "train", "--out", tmp_path / "r", *cli_flags(data, data__seq_len=32, data__total_batch_tokens=128)),
                   "longer than the model's context")
    one_line_error(run_main(capsys, "plot", tmp_path / "r", "--out", tmp_path / "x.png"), "no metrics.jsonl")

    run = tmp_path / "run"
    flags = cli_flags(data, schedule__max_steps=3)
    assert run_main(capsys, "train", "--out", run, *flags).returncode == 0
    before = losses(run)
    one_line_error(run_main(capsys, "train", "--out", run, *flags), "already holds a training run", "--resume")
    assert losses(run) == before  # nothing lost
    one_line_error(run_main(capsys, "train", "--out", run, "--resume", *flags, "--set", "optim.lr=0.1",
                            "--model.n_layer", "3"), "optim.lr (0.003 -> 0.1)", "model.n_layer (2 -> 3)")
    assert run_main(capsys, "train", "--out", run, "--overwrite", *flags).returncode == 0
    assert run_main(capsys, "train", "--out", run, "--resume").returncode == 0  # the saved config alone

    diverging = tmp_path / "diverging"
    result = run_main(capsys, "train", "--out", diverging, *cli_flags(
        data, optim__lr=1e30, optim__min_lr=0, optim__grad_clip=0, schedule__warmup_steps=0, checkpoint__every=1,
        schedule__max_steps=6))
    one_line_error(result, "loss became nan", "at step 2", "step_00000001")
    assert RunDirectory(diverging).latest_checkpoint().name == "step_00000001"  # the last good one is kept...
    kept = load_model(diverging).state_dict()  # ... and loads, with the weights of step 1: finite, trained
    assert all(torch.isfinite(t).all() for t in kept.values())
    assert float(kept["transformer.h.0.mlp.c_fc.bias"].abs().max()) > 1e20  # moved by one step of lr 1e30
    assert max(losses(diverging)) == 1  # the NaN step was not logged as if it were a result


def test_a_micro_batch_too_large_for_memory_is_refused_up_front(tmp_path, capsys, monkeypatch):
    from gpt2lab.runtime import memory

    # The tiny config's 50,304-token vocabulary x 16 positions: 4 sequences need ~26 MB of logits, 64 ~410 MB.
    monkeypatch.setattr(memory, "available_bytes", lambda device: 100 * 2**20)
    data = write_dataset(tmp_path / "data")
    refused = run_main(capsys, "train", "--out", tmp_path / "r",
                       *cli_flags(data, data__batch_size=64, data__total_batch_tokens=1024))
    one_line_error(refused, "data.batch_size 64 (x data.seq_len 16) would need ~", "100 MiB available; lower it")
    assert not (tmp_path / "r").exists()  # refused before anything was written
    assert run_main(capsys, "train", "--out", tmp_path / "ok", *cli_flags(data, schedule__max_steps=1)).returncode == 0


def test_a_sample_count_too_large_for_memory_is_refused_up_front(tmp_path, capsys, monkeypatch):
    from gpt2lab.runtime import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: 100 * 2**20)
    data = write_dataset(tmp_path / "data")
    refused = run_main(capsys, "train", "--out", tmp_path / "r",
                       *cli_flags(data, eval__sample_every=1, eval__sample_count=100000))
    one_line_error(refused, "eval.sample_count 100000 would need ~", "to sample during training")
    assert not (tmp_path / "r").exists()
    fits = run_main(capsys, "train", "--out", tmp_path / "ok",
                    *cli_flags(data, schedule__max_steps=1, eval__sample_every=1, eval__sample_count=2))
    assert fits.returncode == 0


def test_init_fine_tunes_a_saved_model(tmp_path, tiny_model_dir, capsys):
    data = write_dataset(tmp_path / "data")
    run = tmp_path / "run"
    assert run_main(capsys, "train", "--out", run, "--init", tiny_model_dir, *cli_flags(data, schedule__max_steps=3)
                    ).returncode == 0
    start, tuned = load_model(tiny_model_dir), load_model(run)
    assert tuned.config == start.config  # the shape comes from the model, not from the [model] section
    moved = tuned.state_dict()["transformer.h.0.mlp.c_fc.weight"] - start.state_dict()["transformer.h.0.mlp.c_fc.weight"]
    assert 0 < float(moved.abs().max()) < 0.1  # trained a little, from those weights
    # the run's checkpoint is self-contained for HF tools: GPT-2's tokenizer is in it
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(RunDirectory(run).latest_checkpoint()).encode("Hello, world") == [15496, 11, 995]


def test_bad_input_on_the_command_line_and_resume_into_muon(tmp_path, capsys):
    data = write_dataset(tmp_path / "data")
    one_line_error(run_main(capsys, "train", "--out", tmp_path / "r", *cli_flags(data), "--optim.name", "adam"),
                   "optim.name must be adamw or muon, got 'adam'")
    one_line_error(run_main(capsys, "train", "--out", tmp_path / "r", *cli_flags(data), "--optim.muon_lr", "0.1"),
                   "optim.muon_lr is a Muon setting but optim.name is adamw")
    one_line_error(run_main(capsys, "train", "--out", tmp_path / "r", *cli_flags(data),
                            "--schedule.decay_fraction", "2"), "schedule.decay_fraction must be in (0, 1]")
    assert not (tmp_path / "r").exists()
    run = tmp_path / "run"
    flags = cli_flags(data, schedule__max_steps=2)
    assert run_main(capsys, "train", "--out", run, *flags).returncode == 0
    written = lambda: {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.name != ".gpt2lab.lock"}  # noqa: E731
    files = written()
    one_line_error(run_main(capsys, "train", "--out", run, "--resume", *flags, "--optim.name", "muon"),
                   "optim.name ('adamw' -> 'muon')")
    assert written() == files  # nothing written (only the run's lock was taken and released)


def _flip_a_bit(path, offset=1001):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def test_a_changed_shard_is_refused_at_start_and_at_resume_unless_verification_is_off(tmp_path, capsys):
    data = write_dataset(tmp_path / "data")
    run = tmp_path / "run"
    flags = cli_flags(data, schedule__max_steps=2)
    started = run_main(capsys, "train", "--out", run, *flags)
    assert started.returncode == 0 and "data: verified" in started.stdout
    _flip_a_bit(data / "train_000000.bin")
    one_line_error(run_main(capsys, "train", "--out", run, "--resume", *flags),
                   "train_000000.bin does not match its sha256")
    one_line_error(run_main(capsys, "train", "--out", tmp_path / "fresh", *flags), "train_000000.bin", "sha256")
    assert not (tmp_path / "fresh" / "checkpoints").exists()  # refused before anything was written
    resumed = run_main(capsys, "train", "--out", run, "--resume", "--no-verify", *flags)
    assert resumed.returncode == 0 and "data: verified" not in resumed.stdout  # data.verify is no resume mismatch
    assert "already complete at step 2" in resumed.stdout


def test_token_ids_beyond_the_vocabulary_name_the_shard(tmp_path, capsys):
    import hashlib
    import json

    import numpy as np

    data = write_dataset(tmp_path / "data")
    tokens = np.fromfile(data / "train_000000.bin", dtype="<u2")
    tokens[5] = 65000
    tokens.tofile(data / "train_000000.bin")
    manifest = json.loads((data / "manifest.json").read_text())  # a consistent manifest: the ids are the problem
    manifest["splits"]["train"][0]["sha256"] = hashlib.sha256((data / "train_000000.bin").read_bytes()).hexdigest()
    (data / "manifest.json").write_text(json.dumps(manifest))
    one_line_error(run_main(capsys, "train", "--out", tmp_path / "run", *cli_flags(data, data__shuffle="false")),
                   "train_000000.bin holds token id 65000")


def test_an_empty_val_split_trains_when_validation_is_off(tmp_path, capsys):
    import json

    data = write_dataset(tmp_path / "data")
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["splits"]["val"] = []
    (data / "manifest.json").write_text(json.dumps(manifest))
    (data / "val_000000.bin").unlink()
    one_line_error(run_main(capsys, "train", "--out", tmp_path / "on", *cli_flags(data, schedule__max_steps=2,
                                                                            eval__val_every=1)),
                   "split 'val'", "eval.val_every = 0")
    off = run_main(capsys, "train", "--out", tmp_path / "off", *cli_flags(data, schedule__max_steps=2,
                                                                          eval__val_every=0))
    assert off.returncode == 0 and "validation off" in off.stdout, off.stderr
    assert RunDirectory(tmp_path / "off").latest_checkpoint().name == "step_00000002"


def test_under_torchrun_the_processes_of_one_machine_share_its_memory(tmp_path, capsys, monkeypatch):
    """The CPU refusal counts LOCAL_WORLD_SIZE processes: a micro-batch that fits one process (it trains alone
    under the same limit) is refused when torchrun starts 4 of them on this machine."""
    from gpt2lab.runtime import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: 100 * 2**20)
    data = write_dataset(tmp_path / "data")
    assert run_main(capsys, "train", "--out", tmp_path / "alone", *cli_flags(data, schedule__max_steps=1)).returncode == 0
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "4"}.items():
        monkeypatch.setenv(name, value)  # what torchrun sets (one rank of this process group, four here)
    # the library, not gpt2lab.cli.main: under torchrun main leaves the process through os._exit
    with pytest.raises(memory.MemoryLimitError, match=r"data.batch_size 4 \(x data.seq_len 16, x 4 processes here\)"):
        train(tiny_config(data, schedule__max_steps=1), tmp_path / "shared", log=lambda line: None, progress=False)
    assert not (tmp_path / "shared").exists()
