"""`gpt2lab train --dry-run` and `data.batch_size = "auto"`: the plan is the resolved run's (batch split, epochs,
checkpoint size as a real run writes them), nothing is written, bad input is one line, and "auto" picks, saves and
keeps a micro-batch. (Memory estimates against measured peaks: test_memory_estimate.py.)"""

import json
import shutil
import tomllib

import pytest
import torch

from conftest import run_cli
from gpt2lab import GPT
from gpt2lab.runtime import memory
from gpt2lab.runtime import perf
from gpt2lab.data import TokenLoader
from gpt2lab.runtime import hardware
from gpt2lab.train import batch, plan
from gpt2lab.train.config import ConfigError, resolve_config
from test_train_cli import one_line_error, run_main
from train_utils import cli_flags, losses, write_dataset


def dry_run_json(capsys, *argv) -> dict:
    result = run_main(capsys, "train", "--dry-run", "--json", *argv)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def directory_tree(path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# ---------------------------------------------------------------------------------------------- the plan


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
                   "20,000 train tokens", "per process at a step's peak (bf16, Muon + AdamW)", "runtime",
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


def test_gpu_names_match_the_right_specs():
    names = {"NVIDIA H100 80GB HBM3": "h100", "NVIDIA H100 PCIe": "h100-pcie", "NVIDIA A100-SXM4-80GB": "a100",
             "NVIDIA A100-SXM4-40GB": "a100-40gb", "NVIDIA A10": "a10", "NVIDIA L4": "l4", "NVIDIA L40S": "l40s",
             "NVIDIA GeForce RTX 4090": "rtx4090", "NVIDIA H200": "h200"}
    for name, key in names.items():
        assert hardware.gpu_spec(name) is hardware.GPUS[key], name
    assert hardware.gpu_spec("NVIDIA A10G") is None and hardware.gpu_spec("Tesla T4") is None


# ---------------------------------------------------------------------------------------------- the estimate


def test_the_memory_terms_follow_the_optimizer_precision_accumulation_and_processes():
    arch = resolve_config("shakespeare-cpu").model.gpt_config()
    counts = batch.parameter_counts(arch, "muon")
    assert 0 < counts.muon < counts.cast < counts.total == GPT(arch).num_parameters()
    assert counts.muon == 6 * 12 * 128 * 128  # the blocks' four matrices: 3C^2 + C^2 + 4C^2 + 4C^2 per layer

    def step(**changes):
        kwargs = dict(params=counts.total, cast_params=counts.cast, muon_params=0, amp_bytes=None, grad_accum=1,
                      world_size=1)
        return memory.estimate_training(arch, 8, 128, **{**kwargs, **changes})

    adamw, muon = step(), step(muon_params=counts.muon)
    assert adamw.optimizer - muon.optimizer == 4 * counts.muon  # Muon: one momentum buffer; AdamW: two moments
    assert step(grad_accum=2).gradients == 4 * counts.total and adamw.gradients == 0  # accumulated across micro-steps
    bf16 = step(amp_bytes=2)
    assert bf16.autocast_weights == 2 * counts.cast and adamw.autocast_weights == 0
    assert bf16.activations < adamw.activations and bf16.logits == adamw.logits  # the loss stays float32
    assert step(world_size=8).ddp_buckets == 4 * counts.total and adamw.ddp_buckets == 0
    assert step().total < memory.estimate_training(arch, 16, 128, params=counts.total, cast_params=counts.cast).total


# ---------------------------------------------------------------------------------------------- bad input


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


def test_an_explicit_accumulation_that_agrees_trains_and_logs_the_peak_memory(tmp_path, capsys):
    data = write_dataset(tmp_path / "data")
    run = tmp_path / "run"
    flags = cli_flags(data, schedule__max_steps=2, data__batch_size=2, data__grad_accum=2)
    result = run_main(capsys, "train", "--out", run, *flags)
    assert result.returncode == 0, result.stderr
    assert "64 tokens/step = 2 x 16 x 1 process(es) x 2 micro-steps" in result.stdout
    assert list(losses(run)) == [1, 2]
    # the measured peak is logged on the first steps and with the val loss (here: this test process's peak RSS)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("peak_mem_mb", 0) > 100] == [1, 2, 2]
    assert "val_loss" in records[-1]


def test_the_logged_peak_memory_never_goes_down(tmp_path, capsys, monkeypatch):
    # Linux's VmHWM can read a few hundred KiB lower than a moment before (lagging per-CPU counters); the log keeps
    # the highest reading, which is what a peak is
    readings = iter([300, 500, 499, 600, 550] * 2)
    monkeypatch.setattr("gpt2lab.runtime.memory.peak_bytes", lambda device: next(readings) * 2**20)
    run = tmp_path / "run"
    result = run_main(capsys, "train", "--out", run, *cli_flags(write_dataset(tmp_path / "data"),
                                                                   schedule__max_steps=4))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["peak_mem_mb"] for r in records if "peak_mem_mb" in r] == [300, 500, 500, 600, 600]


# ---------------------------------------------------------------------------------------------- "auto"


def overrides_of(flags) -> list[list[str]]:
    return [flag.split("=", 1) for flag in flags[1::2]]  # ["--set", "key=value", ...]


def budget_between(monkeypatch, fits: int, too_big: int, overrides):
    """Make this CPU's memory such that micro-batch `fits` is the largest that fits and `too_big` does not (with a
    fixed runtime, so that the test does not depend on pytest's own memory)."""
    runtime = 300 * 2**20
    monkeypatch.setattr(batch, "runtime_bytes", lambda device, optimizer: runtime)
    monkeypatch.setattr(plan, "runtime_bytes", lambda device, optimizer: runtime)
    config = resolve_config(overrides=overrides)
    counts = batch.parameter_counts(config.model.gpt_config(), "adamw")
    device = hardware.device_spec(torch.device("cpu"), None)
    step_memory = batch.StepMemory(config.model.gpt_config(), counts, device, 1, runtime - 4 * counts.total)
    T, total = config.data.seq_len, config.data.total_batch_tokens
    low, high = (step_memory.estimate(b, T, total // (b * T)).total for b in (fits, too_big))
    assert low < high
    monkeypatch.setattr(hardware, "cpu_memory_for_one_process", lambda: int((low + high) / 2 / batch.CPU_USABLE))


def test_auto_picks_the_largest_batch_that_fits_saves_it_and_resume_keeps_it(tmp_path, capsys, monkeypatch):
    data = write_dataset(tmp_path / "data")
    run = tmp_path / "run"
    flags = cli_flags(data, schedule__max_steps=3, data__batch_size="auto", data__total_batch_tokens=128,
                      checkpoint__every=2)
    budget_between(monkeypatch, 2, 4, overrides_of(flags))
    trial_sizes = []
    real_trial = batch._trial_step
    monkeypatch.setattr(batch, "_trial_step", lambda net, b, *rest: (trial_sizes.append(b), real_trial(net, b, *rest)))
    result = run_main(capsys, "train", "--out", run, *flags)
    assert result.returncode == 0, result.stderr
    assert "data.batch_size auto: 2 (4 micro-step(s) per step of 128 tokens" in result.stdout
    assert "x 4 micro-steps" in result.stdout and trial_sizes == [2]  # confirmed by one real forward + backward
    saved = tomllib.loads((run / "config.toml").read_text())["data"]
    assert (saved["batch_size"], saved["grad_accum"], saved["total_batch_tokens"]) == (2, 0, 128)

    # more memory now, but a resumed run continues with the micro-batch it started with: from the step-2
    # checkpoint, step 3 again, on the same chunks (another micro-batch size cuts the data differently)
    first = losses(run)
    shutil.rmtree(run / "checkpoints" / "step_00000003")
    monkeypatch.setattr(hardware, "cpu_memory_for_one_process", lambda: 100 * 2**30)
    resumed = run_main(capsys, "train", "--out", run, "--resume", *flags)
    assert resumed.returncode == 0, resumed.stderr
    assert "data.batch_size auto: 2, as the run chose when it started" in resumed.stdout
    assert losses(run) == first
    fresh = run_main(capsys, "train", "--out", tmp_path / "fresh", *flags)
    assert "data.batch_size auto: 8 (1 micro-step(s)" in fresh.stdout  # all 8 sequences of the step at once


def test_auto_on_a_cpu_too_small_for_one_sequence_is_one_line(tmp_path, capsys, monkeypatch):
    data = write_dataset(tmp_path / "data")
    monkeypatch.setattr(hardware, "cpu_memory_for_one_process", lambda: 200 * 2**20)
    result = run_main(capsys, "train", "--out", tmp_path / "r", *cli_flags(data, data__batch_size="auto"))
    one_line_error(result, "even data.batch_size 1 would need ~", "lower data.seq_len")
    assert not (tmp_path / "r").exists()


def test_auto_backs_off_when_a_gpu_runs_out_of_memory(monkeypatch):
    """The CUDA path of the confirmation, with out-of-memory errors made to order (no GPU here)."""
    net = GPT(resolve_config(overrides=[("model.n_layer", "1"), ("model.n_embd", "32"), ("model.n_head", "2"),
                                        ("model.block_size", "16"), ("model.vocab_size", "64")]).model.gpt_config())
    tried, said = [], []

    def trial(net, batch_size, *rest):
        tried.append(batch_size)
        if batch_size > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate ...")

    monkeypatch.setattr(batch, "_trial_step", trial)
    assert batch.confirm_batch_size(net, [8, 4, 2, 1], 16, torch.device("cpu"), None, 0, log=said.append) == 2
    assert tried == [8, 4, 2] and "8 ran out of memory" in said[0] and "trying 4" in said[0]
    monkeypatch.setattr(batch, "_trial_step", lambda *a: (_ for _ in ()).throw(torch.OutOfMemoryError("oom")))
    with pytest.raises(batch.GPT2LabError, match="even 1 sequence of 16 tokens runs out of memory"):
        batch.confirm_batch_size(net, [2, 1], 16, torch.device("cpu"), None, 0, log=said.append)


def test_the_trial_step_leaves_no_trace(tmp_path):
    """Confirming "auto" runs a forward + backward on the model about to be trained: it must not move the weights,
    leave gradients or draw from the global RNG."""
    net = GPT(resolve_config(overrides=[("model.n_layer", "1"), ("model.n_embd", "32"), ("model.n_head", "2"),
                                        ("model.block_size", "16"), ("model.vocab_size", "64")]).model.gpt_config())
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    batch._trial_step(net, 4, 16, torch.device("cpu"), None, 0)
    assert all(torch.equal(weights[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_runtime_measurement_leaves_the_global_rng_alone():
    rng = torch.get_rng_state()
    assert batch.runtime_bytes(hardware.device_spec(torch.device("cpu"), None), "adamw") > 50 * 2**20
    assert torch.equal(torch.get_rng_state(), rng)
