"""`gpt2lab bench`'s flags (gpt2lab/cli/bench.py): bad values and sizes beyond the memory available are refused in
one line, before anything is measured. (What each mode measures: tests/unit/tools/bench/.)"""

import pytest

from gpt2lab.cli import main


@pytest.mark.parametrize("args, message", [
    (["train", "--model", "tiny", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["train", "--model", "tiny", "--seq-len", "4096"], "--seq-len (4096) is longer than the model's context of 128 tokens"),
    (["generate", "--dtypes", "float8"], "unknown dtype 'float8'"),
    (["train", "--device", "tpu"], "unknown device 'tpu'"),
    (["generate", "--model", "tiny", "--compile"], "--compile applies to `bench train` only"),
])
def test_bench_bad_input(capsys, args, message):
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["train", "--model", "tiny", "--batch-size", "2", "--seq-len", "32"], "--batch-size 2 (x 32 tokens) would need ~"),
    (["generate", "--model", "tiny", "--batch-sizes", "1,4", "--new-tokens", "8"],
     "--batch-sizes 4 (x 8 new tokens) would need ~"),
    (["prepare", "--text-repeat", "1"], "--text-repeat 1 would need ~"),
], ids=["train", "generate", "prepare"])
def test_bench_refuses_sizes_beyond_the_memory_available(capsys, monkeypatch, args, message):
    from gpt2lab.runtime import memory

    # 1 MiB "available": small sizes, so that a broken check would run a short benchmark, not exhaust memory
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**20)
    assert main(["bench", *args, "--no-compare", "--repeats", "1"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.rstrip().endswith("more than the 1 MiB available; lower it")
    assert len(err.strip().splitlines()) == 1
