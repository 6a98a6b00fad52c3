"""Batch arithmetic and `data.batch_size = "auto"` (gpt2lab/train/batch.py): accumulation from the token budget, the
largest micro-batch that fits (saved, and kept on resume), backing off on out-of-memory, a clean trial step."""

import shutil
import tomllib

import pytest
import torch

from gpt2lab.model.gpt import GPT
from gpt2lab.runtime import hardware
from gpt2lab.train import batch, plan
from gpt2lab.train.parallel import ParallelModel
from gpt2lab.train.batch import grad_accum_steps
from gpt2lab.train.config_files import resolve_config

from tests.train_utils import cli_flags, losses, one_line_error, overrides_of, run_main, write_dataset


def test_grad_accum_steps_from_the_token_budget():
    assert grad_accum_steps(524288, 64, 1024, 8) == 1
    assert grad_accum_steps(524288, 16, 1024, 1) == 32
    with pytest.raises(Exception, match="not divisible"):
        grad_accum_steps(1000, 4, 16, 1)


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
    assert batch.confirm_batch_size(ParallelModel(net), [8, 4, 2, 1], 16, torch.device("cpu"), None, 0,
                                    log=said.append) == 2
    assert tried == [8, 4, 2] and "8 ran out of memory" in said[0] and "trying 4" in said[0]
    monkeypatch.setattr(batch, "_trial_step", lambda *a: (_ for _ in ()).throw(torch.OutOfMemoryError("oom")))
    with pytest.raises(batch.GPT2LabError, match="even 1 sequence of 16 tokens runs out of memory"):
        batch.confirm_batch_size(ParallelModel(net), [2, 1], 16, torch.device("cpu"), None, 0, log=said.append)


def test_the_trial_step_leaves_no_trace(tmp_path):
    """Confirming "auto" runs a forward + backward on the model about to be trained: it must not move the weights,
    leave gradients or draw from the global RNG."""
    net = GPT(resolve_config(overrides=[("model.n_layer", "1"), ("model.n_embd", "32"), ("model.n_head", "2"),
                                        ("model.block_size", "16"), ("model.vocab_size", "64")]).model.gpt_config())
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    batch._trial_step(ParallelModel(net), 4, 16, torch.device("cpu"), None, 0)
    assert all(torch.equal(weights[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_runtime_measurement_leaves_the_global_rng_alone():
    rng = torch.get_rng_state()
    assert batch.runtime_bytes(hardware.device_spec(torch.device("cpu"), None), "adamw") > 50 * 2**20
    assert torch.equal(torch.get_rng_state(), rng)


def test_auto_strategy_keeps_ddp_while_a_whole_copy_fits_and_shards_when_only_that_fits():
    """parallel.strategy = "auto" on 8 planned 24 GB GPUs: GPT-2 124M fits whole (DDP); gpt2-xl does not at any
    micro-batch, while its shards do (FSDP)."""
    from gpt2lab.model.config import GPTConfig

    device = hardware.planned_device("rtx4090")
    config = resolve_config("gpt2-124m-fineweb-edu", overrides=[("data.batch_size", "auto")])

    def memory_of(arch):
        return batch.StepMemory(arch, batch.parameter_counts(arch, "adamw"), device, 8, batch.CUDA_CONTEXT_BYTES)

    small = memory_of(config.model.gpt_config())
    assert batch.choose_strategy(small, config.data)[0] == "ddp"
    xl = memory_of(GPTConfig.from_preset("gpt2-xl", vocab_size=50304))
    strategy, why = batch.choose_strategy(xl, config.data)
    assert strategy == "fsdp" and "DDP does not fit, FSDP ~" in why and "at micro-batch" in why
    assert batch.choose_strategy(batch.StepMemory(xl.arch, xl.params, device, 1, 0), config.data)[0] == "ddp"  # alone
    fixed = resolve_config("gpt2-124m-fineweb-edu", overrides=[("data.batch_size", "64")]).data
    assert batch.choose_strategy(small, fixed)[0] == "fsdp"  # 64 x 1024 tokens: no whole copy fits; shards need least
