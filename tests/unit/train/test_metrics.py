"""What a run records about itself (gpt2lab/train/metrics.py): metrics.jsonl (strict JSON) and the dashboards fed
from it, and the step timer's tokens/s and MFU."""

import json
import math

import pytest
import torch

from gpt2lab.train.metrics import MetricsLog


def test_mfu_is_achieved_over_peak_flops_of_all_gpus(monkeypatch):
    from gpt2lab.runtime import hardware, perf
    from gpt2lab.train import metrics as metrics_module

    assert perf.flops_per_token(124_000_000, 12, 768, 1024) == 6 * 124_000_000 + 6 * 12 * 768 * 1024
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert hardware.peak_flops(torch.device("cuda")) == 989e12
    assert hardware.peak_flops(torch.device("cpu")) is None  # no MFU on CPUs
    times = iter([10.0, 10.5])  # a step of half a second
    monkeypatch.setattr(perf.time, "perf_counter", lambda: next(times))
    timer = metrics_module.StepTimer(torch.device("cpu"), flops_per_token=1e9, peak=100e12, world_size=8)
    timer.start()
    timing = timer.stop(tokens=524_288)
    assert timing["tokens_per_s"] == pytest.approx(524_288 / 0.5) and timing["ms_per_step"] == pytest.approx(500)
    assert timing["mfu"] == pytest.approx(524_288 / 0.5 * 1e9 / (100e12 * 8))


class Sink:
    """A dashboard that keeps what it is given."""

    def __init__(self):
        self.scalars_given, self.texts, self.closed = [], [], False

    def scalars(self, step, values):
        self.scalars_given.append((step, values))

    def text(self, step, name, text):
        self.texts.append((step, name, text))

    def close(self):
        self.closed = True


def test_the_metrics_log_is_json_lines_first_then_the_dashboards_get_the_numbers(tmp_path):
    sink = Sink()
    log = MetricsLog(tmp_path / "metrics.jsonl", sinks=[sink])
    log.write({"step": 1, "loss": 5.5, "lr": 1e-3, "note": "warmup"})
    log.write({"step": 2, "loss": float("nan"), "grad_norm": float("inf")})
    log.write_text(2, "samples", "ROMEO: ...")
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"step": 1, "loss": 5.5, "lr": 1e-3, "note": "warmup"},
                                                   {"step": 2, "loss": "nan", "grad_norm": "inf"}]
    assert "NaN" not in lines[1] and "Infinity" not in lines[1]  # strict JSON: any reader can parse it
    assert sink.scalars_given[0] == (1, {"loss": 5.5, "lr": 1e-3})  # numbers only, the step apart
    (step, values), = sink.scalars_given[1:]
    assert step == 2 and math.isnan(values["loss"]) and values["grad_norm"] == math.inf
    assert sink.texts == [(2, "samples", "ROMEO: ...")]
    log.close()
    assert sink.closed and log.sinks == []


def test_a_disabled_log_writes_nothing_anywhere(tmp_path):
    sink = Sink()
    log = MetricsLog(tmp_path / "metrics.jsonl", enabled=False, sinks=[sink])  # another rank than 0
    log.write({"step": 1, "loss": 5.5})
    log.write_text(1, "samples", "text")
    assert not (tmp_path / "metrics.jsonl").exists() and sink.scalars_given == sink.texts == []
