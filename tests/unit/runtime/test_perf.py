"""Performance arithmetic and timing (gpt2lab/runtime/perf.py): training FLOPs per token, and timers that time each
call and wait for the device's queued work (a fake clock and a fake CUDA: nothing here depends on this machine's
speed)."""

import pytest
import torch

from gpt2lab.runtime import perf


def test_training_flops_per_token_are_6n_plus_attention():
    assert perf.flops_per_token(124_000_000, 12, 768, 1024) == 6 * 124_000_000 + 6 * 12 * 768 * 1024
    assert perf.flops_per_token(1000, 2, 8, 0) == 6000  # no context: the matmuls alone


@pytest.fixture
def clock(monkeypatch):
    """perf's clock, advanced by hand: `clock.now` is what perf_counter returns."""
    class Clock:
        now = 0.0

    monkeypatch.setattr(perf.time, "perf_counter", lambda: Clock.now)
    return Clock


def test_time_calls_times_each_call_on_its_own(clock):
    durations = iter([0.5, 2.0, 0.25])

    def work():
        clock.now += next(durations)

    assert perf.time_calls(work, "cpu", 3) == [0.5, 2.0, 0.25]


def test_the_stopwatch_waits_for_a_gpu_at_start_and_stop_and_never_for_a_cpu(clock, monkeypatch):
    synced = []

    def synchronize(device=None):  # the GPU finishes the work queued so far: a quarter of a second
        synced.append(device)
        clock.now += 0.25

    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    watch = perf.Stopwatch(torch.device("cuda", 1))
    watch.start()  # waits for the work queued before: not timed
    clock.now += 1.5  # the work being timed is queued...
    assert watch.stop() == 1.75  # ... and waited for: timed, the wait included
    assert synced == [torch.device("cuda", 1)] * 2
    synced.clear()
    cpu = perf.Stopwatch("cpu")
    cpu.start()
    clock.now += 0.5
    assert cpu.stop() == 0.5 and synced == []


def test_calls_per_second_counts_the_calls_completed_over_the_time_taken(clock):
    def work():
        clock.now += 0.25

    assert perf.calls_per_second(work, "cpu", seconds=1.0) == 4.0  # 4 calls fill the second
