"""`gpt2lab train` / `gpt2lab plot` as a user runs them: config resolution, the demo preset, and bad input
(one clear stderr line, exit code 2, no traceback, nothing lost)."""

import json

import pytest
import torch

from conftest import run_cli
from gpt2lab.cli import main
from gpt2lab.model.gpt import load_model
from gpt2lab.storage.run_directory import RunDirectory
from gpt2lab.train.config import (ConfigError, TrainConfig, incompatible_fields, read_config_file, resolve_config,
                                  to_toml)
from train_utils import cli_flags, losses, write_dataset


def one_line_error(result, *needles):
    assert result.returncode == 2, (result.returncode, result.stdout[-500:], result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def run_main(capsys, *argv):
    """The CLI in-process (same code path as the subprocess, without paying torch's import again)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return type("Result", (), {"returncode": code, "stdout": out, "stderr": err})


# ---------------------------------------------------------------------------------------------- config


def test_config_layers_file_overrides_and_toml_round_trip(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("optim:\n  lr: 3.0e-3\nschedule:\n  max_steps: 77\n")
    config = resolve_config("shakespeare-cpu", path, [("optim.beta2", "0.99"), ("runtime.compile", "true")])
    assert config.model.n_layer == 6 and config.optim.lr == 3e-3 and config.schedule.max_steps == 77
    assert config.optim.beta2 == 0.99 and config.runtime.compile is True
    (tmp_path / "saved.toml").write_text(to_toml(config))
    assert resolve_config(base=read_config_file(tmp_path / "saved.toml")) == config
    reproduction = resolve_config("gpt2-124m-fineweb-edu")
    assert (reproduction.data.total_batch_tokens, reproduction.data.batch_size, reproduction.data.seq_len) == (
        524288, 64, 1024)
    assert (reproduction.optim.lr, reproduction.optim.min_lr, reproduction.schedule.warmup_steps,
            reproduction.schedule.max_steps, reproduction.model.vocab_size) == (6e-4, 6e-5, 715, 19073, 50304)


def test_the_muon_reproduction_preset_is_the_same_run_in_a_third_of_the_tokens():
    adamw, muon = resolve_config("gpt2-124m-fineweb-edu"), resolve_config("gpt2-124m-fineweb-edu-muon")
    assert (muon.model, muon.data, muon.eval) == (adamw.model, adamw.data, adamw.eval)  # same model, data, batch
    assert muon.optim.name == "muon" and muon.schedule.name == "wsd"
    tokens = lambda config: config.schedule.max_steps * config.data.total_batch_tokens  # noqa: E731
    assert tokens(muon) <= tokens(adamw) / 3


def test_config_errors_name_the_key_and_suggest():
    with pytest.raises(ConfigError, match="did you mean 'optim.lr'"):
        resolve_config(overrides=[("optim.lrr", "1")])
    with pytest.raises(ConfigError, match="did you mean 'optim.weight_decay'"):
        resolve_config(overrides=[("weight_decay", "1")])
    with pytest.raises(ConfigError, match="wants int"):
        resolve_config(overrides=[("schedule.max_steps", "ten")])
    with pytest.raises(ConfigError, match="did you mean 'shakespeare-cpu'"):
        resolve_config("shakespeare_cpu")
    old, new = TrainConfig(), TrainConfig()
    new.optim.lr, new.runtime.device, new.eval.val_every = 1e-3, "cuda", 5
    assert incompatible_fields(old, new) == ["optim.lr (0.0006 -> 0.001)"]


# ---------------------------------------------------------------------------------------------- the demo preset


def test_shakespeare_cpu_preset_runs_a_few_steps_then_plot(tmp_path):
    data = write_dataset(tmp_path / "data", train_tokens=40_000, val_tokens=5_000)
    run = tmp_path / "run"
    result = run_cli("train", "--preset", "shakespeare-cpu", "--out", run, "--steps", "2",
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


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_inputs_in_real_subprocesses(tmp_path):
    data = write_dataset(tmp_path / "data")
    one_line_error(run_cli("train", "--out", tmp_path / "r", *cli_flags(data, data__total_batch_tokens=100)),
                   "data.total_batch_tokens (100) is not divisible", "64")
    one_line_error(run_cli("train", "--out", tmp_path / "r", *cli_flags(tmp_path / "nowhere")),
                   "does not exist", "gpt2lab prepare")
    one_line_error(run_cli("train", "--out", tmp_path / "r", "--optim.lrr", "1"), "did you mean 'optim.lr'")
    assert not (tmp_path / "r").exists()  # nothing was created by a refused run


def test_bad_inputs_in_process(tmp_path, capsys):
    data = write_dataset(tmp_path / "data")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(run_main(capsys, "train", "--out", tmp_path / "r", *cli_flags(empty)), "no manifest.json")
    foreign = write_dataset(tmp_path / "foreign", tokenizer="llama")
    one_line_error(run_main(capsys, "train", "--out", tmp_path / "r", *cli_flags(foreign)), "another tokenizer")
    one_line_error(run_main(capsys, "train", "--out", tmp_path / "r", *cli_flags(data, model__vocab_size=1000)),
                   "model.vocab_size is 1000")
    one_line_error(run_main(capsys, "train", "--out", tmp_path / "r", "--resume", *cli_flags(data)),
                   "no complete checkpoint")
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


def _run_trained_on(tmp_path, name: str, source: str, records: list[dict]):
    """A run directory whose config.toml names a prepared dataset of `source`, with these metrics."""
    data = write_dataset(tmp_path / f"data-{name}", source=source)
    run = tmp_path / name
    run.mkdir()
    (run / "config.toml").write_text(f'[data]\ndir = "{data}"\n')
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def test_plot_draws_every_run_and_the_gpt2_baselines(tmp_path, monkeypatch, capsys):
    """The figure itself, caught as it is saved: each run's train and val curves with its logged values, and the
    dashed GPT-2 124M baselines (HellaSwag acc_norm 0.2955 and GPT-3's 0.337 always; the FineWeb-Edu val loss
    3.2924 only over runs trained on FineWeb-Edu: not over the Shakespeare demo, a different corpus)."""
    from matplotlib.figure import Figure

    runs = []
    for i, name in enumerate(("alpha", "beta")):
        records = [{"step": s, "loss": 10.0 - s - i} for s in range(1, 5)] + [
            {"step": 4, "val_loss": 5.5 - i}, {"step": 4, "hellaswag_acc": 0.25, "hellaswag_acc_norm": 0.26 + i / 100}]
        runs.append(_run_trained_on(tmp_path, name, "hf:HuggingFaceFW/fineweb-edu:sample-10BT", records))
    figures = []
    real_savefig = Figure.savefig

    def savefig(fig, *args, **kwargs):
        figures.append(fig)
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)

    def curves(axis):
        return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in axis.get_lines()}

    def flat(axis):  # horizontal lines: their y value
        return sorted({round(ys[0], 4) for xs, ys in curves(axis).values() if len(set(ys)) == 1 and len(ys) == 2})

    assert main(["plot", *map(str, runs), "--out", str(tmp_path / "both.png")]) == 0
    loss_axis, hellaswag_axis = figures[-1].axes
    drawn = curves(loss_axis)
    assert drawn["alpha train"] == ([1, 2, 3, 4], [9.0, 8.0, 7.0, 6.0])
    assert drawn["beta train"] == ([1, 2, 3, 4], [8.0, 7.0, 6.0, 5.0])
    assert drawn["alpha val"] == ([4], [5.5]) and drawn["beta val"] == ([4], [4.5])
    assert flat(loss_axis) == [3.2924]
    assert curves(hellaswag_axis)["beta acc_norm"] == ([4], [0.27])
    assert flat(hellaswag_axis) == [0.2955, 0.337]

    assert main(["plot", *map(str, runs), "--out", str(tmp_path / "bare.png"), "--no-baselines"]) == 0
    assert [flat(axis) for axis in figures[-1].axes] == [[], []]

    demo = _run_trained_on(tmp_path, "demo", "shakespeare", records)
    assert main(["plot", str(demo), "--out", str(tmp_path / "demo.png")]) == 0
    loss_axis, hellaswag_axis = figures[-1].axes
    assert flat(loss_axis) == [] and flat(hellaswag_axis) == [0.2955, 0.337]
    assert "demo val" in curves(loss_axis)
    assert (tmp_path / "both.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_at_equal_wall_time_puts_each_val_loss_at_the_training_minutes_spent_by_its_step(tmp_path, monkeypatch,
                                                                                            capsys):
    """--x time: a slower run's val point lands further right (summed ms_per_step, in minutes); --val-only drops
    the train curves. A run that logged no step times cannot be drawn against time: one line, exit 2."""
    from matplotlib.figure import Figure

    def run(name, ms):
        records = [{"step": s, "loss": 9.0 - s, "ms_per_step": ms} for s in range(1, 5)]
        return _run_trained_on(tmp_path, name, "shakespeare", records + [{"step": 2, "val_loss": 6.0},
                                                                         {"step": 4, "val_loss": 5.0}])

    fast, slow = run("fast", 30_000.0), run("slow", 60_000.0)  # half a minute, a minute per step
    figures = []
    real_savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (figures.append(fig), real_savefig(fig, *a, **k)))
    assert main(["plot", str(fast), str(slow), "--x", "time", "--val-only", "--out", str(tmp_path / "t.png")]) == 0
    lines = {line.get_label(): list(line.get_xdata()) for line in figures[-1].axes[0].get_lines()}
    assert lines == {"fast val": [1.0, 2.0], "slow val": [2.0, 4.0]}
    assert "minutes" in figures[-1].axes[0].get_xlabel()

    untimed = _run_trained_on(tmp_path, "untimed", "shakespeare", [{"step": 1, "loss": 9.0}])
    one_line_error(run_main(capsys, "plot", untimed, "--x", "time", "--out", tmp_path / "u.png"), "ms_per_step")
