"""`gpt2lab train --dry-run` (gpt2lab/train/plan.py): the plan is the resolved run's (batch split, epochs, checkpoint
size as a real run writes them), for this machine or GPUs it does not have; nothing is written, bad input is one line.
("auto" batch sizes: test_batch.py; memory estimates against measured peaks: tests/e2e/test_memory_estimate.py.)"""

import pytest

from gpt2lab import GPT
from gpt2lab.data import TokenLoader
from gpt2lab.runtime import hardware, perf
from gpt2lab.train import batch, plan
from gpt2lab.train.config import ConfigError
from gpt2lab.train.config_files import resolve_config

from tests.train_utils import cli_flags, dry_run_json, one_line_error, overrides_of, run_main, write_dataset


def directory_tree(path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_dry_run_plans_the_resolved_run_and_writes_nothing(tmp_path, capsys, monkeypatch):
    data = write_dataset(tmp_path / "data", train_tokens=30_000)
    monkeypatch.chdir(tmp_path)
    before = directory_tree(tmp_path)
    flags = cli_flags(data, schedule__max_steps=50, data__batch_size=2, data__total_batch_tokens=128)
    found = dry_run_json(capsys, "--out", tmp_path / "run", *flags)
    assert directory_tree(tmp_path) == before  # not the run directory, not a lock, not a cache file
    assert found["estimate"] is True
    assert found["params"] == GPT(resolve_config(overrides=overrides_of(flags)).model.gpt_config()).num_parameters()
    assert (found["batch_size"], found["seq_len"], found["grad_accum"], found["world_size"]) == (2, 16, 4, 1)
    assert (found["tokens_per_step"], found["max_steps"], found["total_tokens"]) == (128, 50, 6400)
    # epochs as the loader counts them: whole steps of 4 chunks of 2 x 16 tokens
    loader = TokenLoader(data, "train", 2, 16, grad_accum=4)
    assert found["data_tokens"] == 30_000 and found["epochs"] == pytest.approx(50 / loader.steps_per_epoch)
    assert found["device_type"] == "cpu" and found["precision"] == "fp32" and isinstance(found["fits"], bool)
    breakdown = found["memory_breakdown_bytes"]
    assert found["memory_per_device_bytes"] == sum(breakdown.values())
    assert breakdown["logits"] == 2 * 16 * 50304 * 12  # the B x T x vocab float32 buffers of the loss
    assert found["est_step_seconds"] > 0 and found["peak_flops"] > 0 and found["assumed_mfu"] == plan.DEFAULT_MFU["cpu"][0]
    assert found["est_total_seconds"] == pytest.approx(50 * found["est_step_seconds"] + found["est_eval_seconds"])
    assert found["checkpoint_disk_bytes"] == found["checkpoint_keep"] * found["checkpoint_bytes"]

    # the same command without --dry-run trains exactly that, and its checkpoint is the size the plan said
    assert run_main(capsys, "train", "--out", tmp_path / "run", *flags, "--set", "schedule.max_steps=2",
                    "--set", "checkpoint.keep=1").returncode == 0
    (checkpoint,) = (tmp_path / "run" / "checkpoints").iterdir()
    written = sum(f.stat().st_size for f in checkpoint.iterdir())
    assert written == pytest.approx(found["checkpoint_bytes"], rel=0.03)


def test_the_text_plan_names_what_a_user_needs(tmp_path, capsys):
    data = write_dataset(tmp_path / "data")
    result = run_main(capsys, "train", "--dry-run", *cli_flags(data, runtime__precision="bf16", optim__name="muon"))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for needle in ("plan (estimates)", "parameters", "tokens/step = 4 x 16 x 1 process(es) x 1 micro-step(s)",
                   "20,000 train tokens", "per process at a step's peak (bf16, Muon + AdamW, one process)", "runtime",
                   "autocast copies", "logits", f"assumed {plan.DEFAULT_MFU['cpu'][0]:.0%} MFU",
                   "measured: bfloat16 matmul", "checkpoints ~"):
        assert needle in text, text


def test_dry_run_without_prepared_data_still_plans(tmp_path, capsys):
    found = dry_run_json(capsys, *cli_flags(tmp_path / "not-prepared-yet"))
    assert found["epochs"] is None and found["data_tokens"] is None
    assert "gpt2lab prepare" in found["notes"][0] and found["memory_per_device_bytes"] > 0
    assert not (tmp_path / "not-prepared-yet").exists()


def test_a_fine_tune_is_planned_from_the_model_it_starts_from(tmp_path, capsys, tiny_model_dir):
    data = write_dataset(tmp_path / "data")
    local = dry_run_json(capsys, *cli_flags(data), "--init", tiny_model_dir)
    assert local["params"] == GPT.from_pretrained(tiny_model_dir).num_parameters() and local["n_layer"] == 3
    released = dry_run_json(capsys, *cli_flags(data), "--init", "gpt2", "--data.seq_len", "16")
    assert released["params"] == 124_439_808  # the released shape, known without downloading anything
    one_line_error(run_main(capsys, "train", "--dry-run", *cli_flags(data), "--init", "someone/not-cached-here"),
                   "without its config.json", "downloads nothing")


def test_plan_for_gpus_this_machine_does_not_have(capsys):
    """The reproduction preset on 8 x H100 and on one 24 GB GPU, from published specs (nothing here has a GPU)."""
    h100 = dry_run_json(capsys, "--preset", "gpt2-124m-fineweb-edu", "--plan-device", "h100", "--plan-gpus", "8")
    assert h100["device_planned"] and h100["device"] == "NVIDIA H100 SXM 80GB" and h100["precision"] == "bf16"
    assert (h100["params"], h100["grad_accum"], h100["world_size"]) == (124_475_904, 1, 8)
    assert h100["fits"] is True and h100["memory_breakdown_bytes"]["ddp_buckets"] == 4 * 124_475_904
    step = 524_288 * perf.flops_per_token(124_475_904, 12, 768, 1024) / (8 * 989e12 * 0.35)
    assert h100["est_step_seconds"] == pytest.approx(step)
    assert h100["device_hours"] == pytest.approx(h100["est_total_seconds"] * 8 / 3600)
    faster = dry_run_json(capsys, "--preset", "gpt2-124m-fineweb-edu", "--plan-device", "h100", "--plan-gpus", "8",
                          "--assume-mfu", "0.7")
    assert faster["est_step_seconds"] == pytest.approx(step / 2) and faster["mfu_source"] == "--assume-mfu"

    small = dry_run_json(capsys, "--preset", "gpt2-124m-fineweb-edu", "--plan-device", "rtx4090")
    assert small["fits"] is False and small["grad_accum"] == 8
    assert any("does not fit" in note and "auto" in note for note in small["notes"])
    auto = dry_run_json(capsys, "--preset", "gpt2-124m-fineweb-edu", "--plan-device", "rtx4090",
                        "--data.batch_size", "auto")
    assert auto["batch_size_auto"] and auto["fits"] is True and auto["batch_size"] < 64
    assert auto["batch_size"] * 1024 * auto["grad_accum"] == 524_288  # the step's tokens are unchanged
    assert auto["memory_per_device_bytes"] <= batch.GPU_USABLE * hardware.GPUS["rtx4090"].memory_bytes
    bigger = dry_run_json(capsys, "--preset", "gpt2-124m-fineweb-edu", "--plan-device", "rtx4090",
                          "--data.batch_size", str(auto["batch_size"] * 2))
    assert bigger["memory_per_device_bytes"] > batch.GPU_USABLE * hardware.GPUS["rtx4090"].memory_bytes  # the largest


def test_bad_plans_are_one_line_each(tmp_path, capsys):
    data = write_dataset(tmp_path / "data")
    flags = cli_flags(data)
    one_line_error(run_main(capsys, "train", "--json", *flags, "--out", tmp_path / "r"), "--json", "--dry-run")
    one_line_error(run_main(capsys, "train", "--dry-run", "--assume-mfu", "40", *flags), "--assume-mfu", "0.4")
    one_line_error(run_main(capsys, "train", "--dry-run", "--plan-device", "tpu", *flags), "'tpu'", "h100")
    one_line_error(run_main(capsys, "train", "--dry-run", *flags, "--data.batch_size", "many"),
                   "data.batch_size", "int or \"auto\"")
    contradiction = run_main(capsys, "train", "--dry-run", *flags, "--data.batch_size", "auto",
                             "--data.grad_accum", "2")
    one_line_error(contradiction, "data.batch_size = \"auto\" chooses the accumulation", "drop data.grad_accum")
    one_line_error(run_main(capsys, "train", "--dry-run", *flags, "--data.grad_accum", "3"),
                   "data.grad_accum is 3", "data.grad_accum=1")
    one_line_error(run_main(capsys, "train", "--dry-run", *cli_flags(data, data__seq_len=32,
                                                                     data__total_batch_tokens=128)),
                   "longer than the model's context")
    one_line_error(run_main(capsys, "train", "--dry-run", *cli_flags(data, model__vocab_size=1000)),
                   "model.vocab_size=50257")
    # a model that does not fit a 24 GB GPU even one sequence at a time (gpt2-xl's shape with AdamW)
    one_line_error(run_main(capsys, "train", "--dry-run", "--preset", "gpt2-124m-fineweb-edu", "--plan-device", "l4",
                            "--model.n_layer", "48", "--model.n_head", "25", "--model.n_embd", "1600",
                            "--data.batch_size", "auto"),
                   "even data.batch_size 1 would need ~", "NVIDIA L4 24GB", "smaller model")
    assert not (tmp_path / "r").exists()
    assert resolve_config(overrides=[("data.batch_size", "AUTO")]).data.batch_size == "auto"
    with pytest.raises(ConfigError, match="must be positive"):
        resolve_config(overrides=[("data.batch_size", "0")])


def test_epochs_with_several_processes_are_the_loaders(tmp_path, capsys):
    """4 processes x 1 micro-step read 4 chunks a step, as 1 x 4 does: the epochs must count the processes."""
    data = write_dataset(tmp_path / "data", train_tokens=30_000)
    flags = cli_flags(data, schedule__max_steps=50, data__batch_size=2, data__total_batch_tokens=128)
    found = dry_run_json(capsys, *flags, "--plan-gpus", "4")
    assert (found["world_size"], found["grad_accum"]) == (4, 1)
    loader = TokenLoader(data, "train", 2, 16, rank=0, world_size=4, grad_accum=1)
    assert found["epochs"] == pytest.approx(50 / loader.steps_per_epoch)


def test_a_muon_checkpoint_is_planned_at_the_size_its_state_takes(capsys):
    """Muon keeps one momentum buffer per element of its matrices, AdamW two moments: a model whose parameters are
    mostly block matrices (a small vocabulary) shows the difference. Measured: the weights and the optimizer state
    after a real step, as the checkpoint stores them (safetensors + torch.save)."""
    import io

    import torch
    from safetensors.torch import save as save_safetensors

    from gpt2lab.train.optim import make_optimizer

    shape = {"model.vocab_size": 128, "model.n_embd": 128, "model.n_head": 2, "model.n_layer": 2}
    overrides = [("optim.name", "muon"), *((k, str(v)) for k, v in shape.items())]
    found = dry_run_json(capsys, *[f for k, v in overrides for f in ("--set", f"{k}={v}")])
    config = resolve_config(overrides=overrides)
    model = GPT(config.model.gpt_config())
    optimizer = make_optimizer(model, config.optim, torch.device("cpu"))
    model(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long))[1].backward()
    optimizer.step()
    state = io.BytesIO()
    torch.save(optimizer.state_dict(), state)
    weights = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied: stored once
    written = len(save_safetensors(weights)) + len(state.getvalue())
    assert found["checkpoint_bytes"] == pytest.approx(written, rel=0.03)
