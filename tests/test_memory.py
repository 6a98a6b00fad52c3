"""The memory guard: its estimate against measured peaks, and the one-line refusal (available memory patched,
so that nothing depends on this machine's RAM)."""

import os

import pytest

from conftest import REPO
from gpt2lab.runtime import memory
from gpt2lab.model.gpt import GPTConfig

GPT2 = GPTConfig.from_preset("gpt2")


def test_estimate_is_somewhat_below_measured_peaks_of_gpt2():
    # Measured on the 2-core development VM (CPU, float32, VmHWM above the resident weights and AdamW state):
    # one training step on 4 x 256 tokens peaked 1.23 GB higher; a forward pass with the loss on all of
    # 4 x 256 positions (an evaluation batch) 0.41 GB higher. The estimate errs on the side of allowing.
    assert 0.5 * 1.23e9 < memory.forward_bytes(GPT2, 4, 256, training=True) < 1.23e9
    assert 0.5 * 0.41e9 < memory.forward_bytes(GPT2, 4, 256) < 0.41e9


def test_the_reported_sampling_typo_is_far_beyond_a_24_gib_machine_and_the_default_batch_is_small():
    # `--num-samples 100000 --max-new-tokens 2` used to be one batch of 100,000 rows (an 8-token prompt)
    assert memory.forward_bytes(GPT2, 100_000, 8, scored=1, cached=10) > 2 * 24 * memory.GIB
    assert memory.forward_bytes(GPT2, 8, 8, scored=1, cached=10) < 0.01 * memory.GIB


def test_check_fits_refuses_in_one_line_naming_the_number_and_the_fix(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 3 * memory.GIB)
    memory.check_fits("--batch-size 8", 3 * memory.GIB, "cpu")  # just fits: no error
    with pytest.raises(memory.MemoryLimitError, match="--batch-size 9 would need ~3.0 GiB"):
        memory.check_fits("--batch-size 9", 3 * memory.GIB + 1, "cpu")
    with pytest.raises(memory.MemoryLimitError) as refused:
        memory.check_fits("--batch-size 100000", 40 * memory.GIB, "cpu")
    message = str(refused.value)
    assert message == ("--batch-size 100000 would need ~40.0 GiB for one forward pass, more than the 3.0 GiB "
                       "available; lower it")
    monkeypatch.setattr(memory, "available_bytes", lambda device: None)  # unknown: never refuse
    memory.check_fits("--batch-size 100000", 40 * memory.GIB, "cpu")


def test_available_memory_of_a_cpu_is_memavailable(tmp_path, monkeypatch):
    # MemAvailable, not MemTotal nor MemFree (which leaves out the page cache the kernel can drop)
    fake = tmp_path / "meminfo"
    fake.write_text("MemTotal:       24684096 kB\nMemFree:         1002300 kB\nMemAvailable:   22866172 kB\n")
    monkeypatch.setattr(memory, "MEMINFO", str(fake))
    assert memory.available_bytes("cpu") == 22866172 * 1024
    assert memory.available_bytes("meta") is None  # a device whose free memory cannot be known


@pytest.mark.skipif(not os.path.exists("/proc/meminfo"), reason="Linux only")
def test_available_memory_of_this_machine_is_plausible():
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    assert 0 < memory.available_bytes("cpu") <= int(fields["MemTotal"].split()[0]) * 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux only")
def test_the_measured_peak_is_the_process_own_not_its_parents():
    """getrusage's ru_maxrss of a process counts its parent's resident memory at the start (Linux keeps the larger
    across exec): a trainer started from a big process must still log its own peak."""
    import subprocess
    import sys

    ballast = bytearray(1 << 30)
    ballast[::4096] = b"\x01" * len(ballast[::4096])  # resident, not just reserved
    child = "from gpt2lab.runtime import memory; print(memory.peak_bytes('cpu'))"
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert int(out.stdout) < 0.6 * 2**30 < memory.peak_bytes("cpu")  # the child: Python + torch, ~0.25 GB
    del ballast
