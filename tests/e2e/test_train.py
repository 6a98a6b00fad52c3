"""`gpt2lab train` / `gpt2lab plot` as a user runs them, in real processes: the demo preset for a few steps then its
plot, and bad input (one clear stderr line, exit code 2, no traceback, nothing created)."""

import json

from gpt2lab.model.gpt import load_model
from gpt2lab.train.config_files import read_config_file

from tests.conftest import run_cli
from tests.train_utils import cli_flags, one_line_error, write_dataset


def test_shakespeare_cpu_preset_runs_a_few_steps_then_plot(tmp_path):
    data = write_dataset(tmp_path / "data", train_tokens=40_000, val_tokens=5_000)
    run = tmp_path / "run"
    result = run_cli("train", "--preset", "shakespeare-cpu", "--out", run, "--steps", "2",
                     "--data.seq_len_warmup_steps", "1",  # the preset's warm-up fits 300 steps, not 2
                     "--data.dir", data, "--data.batch_size", "1", "--data.total_batch_tokens", "128", "--eval.val_batches=1", "--eval.sample_every", "2",
                     "--eval.sample_tokens", "8")
    assert result.returncode == 0, result.stderr
    assert "6 layers, 128 dims" in result.stdout and "step      2/2" in result.stdout
    assert (run / "samples.txt").read_text().startswith("--- step 2, sample 1 ---\nROMEO:")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "loss", "lr", "grad_norm", "ms_per_step", "tokens_per_s"} <= set(records[0])
    assert any("val_loss" in r for r in records)
    saved = read_config_file(run / "config.toml")
    assert saved["model"]["n_embd"] == 128 and saved["schedule"]["max_steps"] == 2
    assert load_model(run).config.vocab_size == 50304  # an HF checkpoint, loadable by every command

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "metrics.jsonl").write_text(
        json.dumps({"step": 1, "loss": 5.0}) + "\n" + json.dumps({"step": 1, "hellaswag_acc_norm": 0.26}) + "\n")
    plot = run_cli("plot", run, tmp_path / "other", "--out", tmp_path / "loss.png")
    assert plot.returncode == 0, plot.stderr
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_inputs_in_real_subprocesses(tmp_path):
    data = write_dataset(tmp_path / "data")
    one_line_error(run_cli("train", "--out", tmp_path / "r", *cli_flags(data, data__total_batch_tokens=100)),
                   "data.total_batch_tokens (100) is not divisible", "64")
    one_line_error(run_cli("train", "--out", tmp_path / "r", *cli_flags(tmp_path / "nowhere")),
                   "does not exist", "gpt2lab prepare")
    one_line_error(run_cli("train", "--out", tmp_path / "r", "--optim.lrr", "1"), "did you mean 'optim.lr'")
    assert not (tmp_path / "r").exists()  # nothing was created by a refused run


def test_the_preset_shortened_below_its_warmup_says_how_to_shorten_that_too(tmp_path):
    result = run_cli("train", "--preset", "shakespeare-cpu", "--out", tmp_path / "run", "--steps", "100")
    one_line_error(result, "data.seq_len_warmup_steps (300) must not exceed schedule.max_steps (100)",
                   "--set data.seq_len_warmup_steps=N")
    assert not (tmp_path / "run").exists()
