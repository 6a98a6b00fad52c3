"""The sequence-length warm-up (data.seq_len_warmup_steps, data.seq_len_start): its stages, the same tokens per
step at every length, what the trainer feeds the model, and the settings it refuses."""

import pytest
import torch

from gpt2lab.model.gpt import GPT
from gpt2lab.train.config import ConfigError, DataSection
from gpt2lab.train.config_files import resolve_config
from gpt2lab.train.schedule import seq_len_at
from gpt2lab.train.step import in_rows_of
from gpt2lab.train.trainer import train

from tests.train_utils import quiet, tiny_config, write_dataset


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
