"""The schedules (gpt2lab/train/schedule.py): the LR's (cosine and WSD, each param group from its own peak), and
the sequence-length and batch-size warm-ups (data.seq_len_warmup_steps / seq_len_start, data.batch_warmup_steps /
batch_start_tokens): their stages, what the trainer feeds the model, the tokens the planner counts, and the
settings they refuse."""

import math

import pytest
import torch

from gpt2lab.model.gpt import GPT, GPTConfig
from gpt2lab.train.config import ConfigError, DataSection, OptimSection, ScheduleSection
from gpt2lab.train.config_files import resolve_config
from gpt2lab.train.optim import make_optimizer
from gpt2lab.train.schedule import lr_at, seq_len_at, set_lr
from gpt2lab.train.step import in_rows_of
from gpt2lab.train.trainer import train

from tests.train_utils import losses, quiet, tiny_config, write_dataset


def test_lr_schedule_warmup_decay_and_floor():
    optim, schedule = OptimSection(lr=6e-4, min_lr=6e-5), ScheduleSection(max_steps=1000, warmup_steps=100)
    assert lr_at(0, optim, schedule) == pytest.approx(6e-4 / 100)  # never 0 at step 0
    assert lr_at(49, optim, schedule) == pytest.approx(6e-4 * 50 / 100)
    assert lr_at(99, optim, schedule) == pytest.approx(6e-4)  # end of warmup: the peak
    assert lr_at(100, optim, schedule) == pytest.approx(6e-4)
    assert lr_at(550, optim, schedule) == pytest.approx((6e-4 + 6e-5) / 2)  # half-way through the cosine
    assert lr_at(999, optim, schedule) == pytest.approx(6e-5, rel=1e-3)
    assert lr_at(1000, optim, schedule) == 6e-5  # after the end: the floor
    assert lr_at(5000, optim, schedule) == 6e-5
    values = [lr_at(s, optim, schedule) for s in range(100, 1000)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # decay never goes back up


TINY_GPT = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=128)
CPU = torch.device("cpu")


def test_wsd_schedule_and_each_group_from_its_own_peak():
    optim = OptimSection(lr=1e-3, min_lr=1e-4, name="muon", muon_lr=0.02)
    wsd = ScheduleSection(name="wsd", max_steps=100, warmup_steps=10, decay_fraction=0.2)
    assert lr_at(0, optim, wsd) == pytest.approx(1e-4)
    assert lr_at(9, optim, wsd) == lr_at(10, optim, wsd) == lr_at(79, optim, wsd) == 1e-3  # stable
    assert lr_at(80, optim, wsd) == pytest.approx(1e-3)  # cool-down starts at step 100 - 20
    assert lr_at(90, optim, wsd) == pytest.approx((1e-3 + 1e-4) / 2)
    assert lr_at(99, optim, wsd) == pytest.approx(1e-4 + 0.05 * 9e-4)
    assert lr_at(100, optim, wsd) == lr_at(500, optim, wsd) == 1e-4
    assert lr_at(90, optim, wsd, peak=0.02) == pytest.approx((0.02 + 0.002) / 2)  # Muon: same curve, scaled
    whole = ScheduleSection(name="wsd", max_steps=100, warmup_steps=10, decay_fraction=1.0)
    assert lr_at(55, optim, whole) == pytest.approx(1e-4 + 0.5 * 9e-4)  # fraction 1: linear from the warmup
    cosine = ScheduleSection(max_steps=100, warmup_steps=10)
    assert lr_at(55, optim, cosine, peak=0.02) == pytest.approx((0.02 + 0.002) / 2)
    optimizer = make_optimizer(GPT(GPTConfig(**TINY_GPT)), optim, CPU)
    logged = set_lr(optimizer, 90, optim, wsd)
    assert logged == lr_at(90, optim, wsd)
    assert [g["lr"] for g in optimizer.param_groups] == [lr_at(90, optim, wsd, peak=0.02)] * 2 + [logged] * 2


def test_the_context_doubles_in_equal_stages_until_the_full_length():
    data = DataSection(seq_len=128, seq_len_warmup_steps=300, seq_len_start=32)
    assert [seq_len_at(s, data) for s in (0, 149, 150, 299, 300, 10_000)] == [32, 32, 64, 64, 128, 128]
    four_stages = DataSection(seq_len=1024, seq_len_warmup_steps=400, seq_len_start=64)
    assert [seq_len_at(s, four_stages) for s in (0, 99, 100, 200, 300, 399, 400)] == [64, 64, 128, 256, 512, 512,
                                                                                        1024]
    assert seq_len_at(0, DataSection(seq_len=128)) == 128  # off by default


def test_shorter_rows_hold_the_same_tokens_and_targets():
    x = torch.arange(2 * 16).view(2, 16)
    y = x + 1
    (xs, ys), = list(in_rows_of(iter([(x, y)]), 4))
    assert xs.shape == ys.shape == (8, 4)
    assert torch.equal(xs.flatten(), x.flatten()) and torch.equal(ys.flatten(), y.flatten())


def test_the_trainer_feeds_short_rows_during_the_warmup_only(tmp_path, monkeypatch):
    data = write_dataset(tmp_path / "data")
    shapes = []
    forward = GPT.forward

    def recording(self, idx, targets=None):
        if self.training:
            shapes.append(tuple(idx.shape))
        return forward(self, idx, targets)

    monkeypatch.setattr(GPT, "forward", recording)
    # 64 tokens per step = 4 x 16: 4-token rows for steps 0-1, 8 for 2-3, then 16
    train(tiny_config(data, schedule__max_steps=6, data__seq_len_warmup_steps=4, data__seq_len_start=4),
          tmp_path / "run", log=quiet)
    assert shapes == [(16, 4), (16, 4), (8, 8), (8, 8), (4, 16), (4, 16)]


@pytest.mark.parametrize("overrides, needle", [
    ([("data.seq_len_warmup_steps", "10")], "needs both data.seq_len_warmup_steps and data.seq_len_start"),
    ([("data.seq_len_start", "256")], "needs both"),
    ([("data.seq_len_warmup_steps", "10"), ("data.seq_len_start", "-4")], "needs both"),
    ([("data.seq_len_warmup_steps", "10"), ("data.seq_len_start", "384")], "divided by a power of two"),
    ([("data.seq_len_warmup_steps", "10"), ("data.seq_len_start", "1024")], "divided by a power of two"),
    ([("data.seq_len_warmup_steps", "10"), ("data.seq_len_start", "3")], "divided by a power of two"),
    ([("schedule.max_steps", "100"), ("data.seq_len_warmup_steps", "101"), ("data.seq_len_start", "256")],
     r"data.seq_len_warmup_steps \(101\) must not exceed schedule.max_steps \(100\)"),
    ([("data.batch_warmup_steps", "10")], "needs both data.batch_warmup_steps and data.batch_start_tokens"),
    ([("data.batch_warmup_steps", "10"), ("data.batch_start_tokens", "100000")], "divided by a power of two"),
    ([("data.batch_warmup_steps", "10"), ("data.batch_start_tokens", "131072"), ("data.batch_size", "auto")],
     "data.batch_size = \"auto\" does not yet"),
    ([("schedule.max_steps", "5"), ("data.batch_warmup_steps", "6"), ("data.batch_start_tokens", "131072")],
     r"data.batch_warmup_steps \(6\) must not exceed schedule.max_steps \(5\)"),
])
def test_a_warmup_that_does_not_fit_the_run_is_refused(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        resolve_config(overrides=overrides)


def test_the_planner_states_the_warmup_and_the_alignment(tmp_path):
    from gpt2lab.train.plan import format_plan, make_plan, plan_device

    config = tiny_config(write_dataset(tmp_path / "data"), data__seq_len_warmup_steps=4, data__seq_len_start=4,
                         data__align_to_documents="true")
    text = format_plan(make_plan(config, plan_device(config)))
    assert "sequence-length warm-up (4 -> 16 over 4 steps): memory is estimated at the full length" in text
    assert "data.align_to_documents: rows skip the document tails" in text


def test_the_batch_doubles_in_equal_stages_and_the_tokens_are_counted():
    from gpt2lab.train.schedule import batch_tokens_at, tokens_of_steps

    data = DataSection(total_batch_tokens=1024, batch_warmup_steps=100, batch_start_tokens=256)
    assert [batch_tokens_at(s, data) for s in (0, 49, 50, 99, 100)] == [256, 256, 512, 512, 1024]
    assert tokens_of_steps(100, data) == 50 * 256 + 50 * 512
    assert tokens_of_steps(900, data) == 50 * 256 + 50 * 512 + 800 * 1024
    assert tokens_of_steps(30, data) == 30 * 256
    assert tokens_of_steps(900, DataSection(total_batch_tokens=1024)) == 900 * 1024


def test_the_trainer_takes_fewer_micro_steps_early_in_a_batch_warmup(tmp_path, monkeypatch):
    from gpt2lab.train.plan import make_plan, plan_device
    from gpt2lab.train.step import TrainStep

    data = write_dataset(tmp_path / "data")
    real, micro_steps = TrainStep.forward_backward, []

    def counting(step, batches, micro=None):
        micro_steps.append(micro or step.grad_accum)
        return real(step, batches, micro)

    monkeypatch.setattr(TrainStep, "forward_backward", counting)
    # 4 micro-batches of 1 x 16 tokens per full step; 16 tokens (1 micro-step) for steps 0-1, 32 for 2-3
    config = tiny_config(data, data__batch_size=1, data__total_batch_tokens=64, schedule__max_steps=6,
                         data__batch_warmup_steps=4, data__batch_start_tokens=16)
    train(config, tmp_path / "run", log=quiet)
    assert micro_steps == [1, 1, 2, 2, 4, 4]
    # each step's loss is the mean over its own tokens (divided by its micro-steps, not by grad_accum): near
    # ln(vocabulary) for the untrained model's first, one-micro-step steps
    first = losses(tmp_path / "run")
    assert abs(first[1] - math.log(50304)) < 1.0 and abs(first[2] - math.log(50304)) < 1.0, first
    assert make_plan(config, plan_device(config)).total_tokens == 16 * 2 + 32 * 2 + 64 * 2


def test_a_first_step_smaller_than_a_micro_step_is_one_line_exit_2(tmp_path):
    from tests.conftest import run_cli
    from tests.train_utils import cli_flags, one_line_error

    data = write_dataset(tmp_path / "data")
    result = run_cli("train", "--out", tmp_path / "run", *cli_flags(
        data, data__total_batch_tokens=256, data__batch_warmup_steps=4, data__batch_start_tokens=32))
    one_line_error(result, "data.batch_start_tokens (32) is not a multiple of data.batch_size x data.seq_len x "
                           "world size (4 x 16 x 1 = 64)")
