"""The measured peak memory is the process's own, in a child started by a big parent."""

import os

import pytest

from gpt2lab.runtime import memory

from tests.conftest import REPO


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
