"""The trainer at the terminal (gpt2lab/train/console.py): a line per step, a progress bar on a terminal, and the stop
signals (the first finishes the step, the second quits). (A real Ctrl-C of `gpt2lab train`:
tests/e2e/test_train_resume.py.)"""

import signal

import pytest
import torch

from gpt2lab.runtime.distributed import DistContext
from gpt2lab.train import train
from gpt2lab.train.console import StopSignals

from tests.train_utils import step_records, tiny_config, write_dataset


def test_console_line_per_step_and_a_progress_bar_on_a_terminal(tmp_path, monkeypatch, capsys):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    data = write_dataset(tmp_path / "data")
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    train(tiny_config(data, schedule__max_steps=3), tmp_path / "run")
    out = capsys.readouterr().out
    for step, record in enumerate(step_records(tmp_path / "run"), start=1):
        assert f"step {step:>6}/3 | loss {record['loss']:.4f} | lr {record['lr']:.2e} | " in out
    # tqdm's bar on stderr, counting to 3 (which redraws show depends on timing: tqdm skips some within 0.1 s)
    assert "/3 [" in terminal.getvalue() and "step/s" in terminal.getvalue()

    before = len(terminal.getvalue())
    train(tiny_config(data, schedule__max_steps=3), tmp_path / "quiet", progress=False)  # --no-progress
    assert "step      3/3" in capsys.readouterr().out
    assert "step/s" not in terminal.getvalue()[before:]


def test_a_stop_signal_finishes_the_step_a_second_one_quits_and_the_handlers_come_back():
    said = []
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with StopSignals(said.append, torch.device("cpu"), DistContext(), current_step=lambda: 6) as stop:
        assert not stop.requested() and said == []
        signal.raise_signal(signal.SIGTERM)  # delivered to this (the main) thread before raise_signal returns
        assert stop.requested() and stop.name == "SIGTERM"
        assert said == ["SIGTERM received: finishing step 7, then saving a checkpoint (press Ctrl-C again to quit "
                        "without saving)"]
        with pytest.raises(KeyboardInterrupt):  # a second one: now
            signal.raise_signal(signal.SIGINT)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
