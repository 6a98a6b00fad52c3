"""The LR schedules (gpt2lab/train/schedule.py): cosine and WSD, and each param group from its own peak."""

import pytest
import torch

from gpt2lab.model.gpt import GPT, GPTConfig
from gpt2lab.train.config import OptimSection, ScheduleSection
from gpt2lab.train.optim import make_optimizer
from gpt2lab.train.schedule import lr_at, set_lr


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
