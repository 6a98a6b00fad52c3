"""`gpt2lab bench` runs each mode on a tiny config and writes well-formed JSON. No timing assertions."""

import json

import pytest

from gpt2lab.cli import main

ROW_FIELDS = {"impl", "dtype", "batch_size", "tokens_per_s", "ms_per_iter", "peak_mem_mb", "extra"}


def run_bench(tmp_path, capsys, *args):
    out = tmp_path / "bench.json"
    assert main(["bench", *args, "--repeats", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert set(report) == {"mode", "environment", "details", "results", "ratios"}
    for row in report["results"]:
        assert set(row) == ROW_FIELDS
        assert row["tokens_per_s"] > 0 and row["ms_per_iter"] > 0
    assert all(ratio > 0 for ratio in report["ratios"].values())
    assert "ratio gpt2lab" in printed  # the table, with its ratio lines
    assert_ratios_are_ours_over_theirs(report, printed)
    return report


def assert_ratios_are_ours_over_theirs(report, printed):
    """Every ratio is gpt2lab's tokens/s over the alternative's at the same batch size, as printed."""
    import re

    rows = {(r["impl"], r["dtype"], r["batch_size"]): r["tokens_per_s"] for r in report["results"]}
    for name, ratio in report["ratios"].items():
        pattern = r"gpt2lab (\S+) / (.+) (\S+) \(batch (\d+)\)"
        ours_dtype, impl, theirs_dtype, batch = re.fullmatch(pattern, name).groups()
        ours, theirs = rows[("gpt2lab", ours_dtype, int(batch))], rows[(impl, theirs_dtype, int(batch))]
        assert ratio == pytest.approx(ours / theirs, rel=1e-9), name
        assert f"ratio {name}: {ratio:.2f}x" in printed
    alternatives = {(impl, b) for impl, _, b in rows if impl != "gpt2lab"}
    assert {(impl, int(b)) for impl, b in (re.search(r"/ (.+) \S+ \(batch (\d+)\)", n).groups()
                                          for n in report["ratios"])} == alternatives


def test_bench_train(tmp_path, capsys):
    report = run_bench(tmp_path, capsys, "train", "--model", "tiny", "--batch-size", "2", "--seq-len", "32",
                       "--iters", "1", "--dtypes", "float32,bfloat16")
    assert {(r["impl"], r["dtype"]) for r in report["results"]} == {
        ("gpt2lab", "float32"), ("transformers", "float32"), ("gpt2lab", "bfloat16"), ("transformers", "bfloat16")}
    for row in report["results"]:
        assert 0 < row["extra"]["fraction_of_matmul_peak"]
    assert report["details"]["flops_per_token"] > 6 * report["details"]["params"]
    assert "gpt2lab float32 / transformers float32 (batch 2)" in report["ratios"]


def test_bench_generate(tmp_path, capsys):
    report = run_bench(tmp_path, capsys, "generate", "--model", "tiny", "--new-tokens", "8", "--batch-sizes", "1,2",
                       "--no-cache-baseline")
    assert {(r["impl"], r["batch_size"]) for r in report["results"]} == {
        ("gpt2lab", 1), ("gpt2lab", 2), ("transformers", 1), ("transformers", 2), ("no-cache loop", 1),
        ("no-cache loop", 2)}
    assert "gpt2lab float32 / no-cache loop float32 (batch 1)" in report["ratios"]
    batch1 = next(r for r in report["results"] if r["impl"] == "gpt2lab" and r["batch_size"] == 1)
    assert batch1["extra"]["bandwidth_bound_tokens_per_s"] > 0
    assert report["details"]["read_bandwidth_gb_s"] > 0


def test_bench_prepare(tmp_path, capsys):
    report = run_bench(tmp_path, capsys, "prepare", "--text-repeat", "1")
    assert {r["impl"] for r in report["results"]} == {"gpt2lab", "tiktoken"}
    assert report["details"]["documents"] == 42 and report["details"]["tokens"] > 1_500_000


@pytest.mark.parametrize("args, message", [
    (["train", "--model", "tiny", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["train", "--model", "tiny", "--seq-len", "4096"], "longer than the tiny context"),
    (["generate", "--dtypes", "float8"], "unknown dtype 'float8'"),
    (["train", "--device", "tpu"], "unknown device 'tpu'"),
])
def test_bench_bad_input(capsys, args, message):
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["train", "--model", "tiny", "--batch-size", "2", "--seq-len", "32"], "--batch-size 2 with --seq-len 32 would need ~"),
    (["generate", "--model", "tiny", "--batch-sizes", "1,4", "--new-tokens", "8"],
     "--batch-sizes 4 with --new-tokens 8 would need ~"),
    (["prepare", "--text-repeat", "1"], "--text-repeat 1 would need ~"),
], ids=["train", "generate", "prepare"])
def test_bench_refuses_sizes_beyond_the_memory_available(capsys, monkeypatch, args, message):
    from gpt2lab import memory

    # 1 MiB "available": small sizes, so that a broken check would run a short benchmark, not exhaust memory
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**20)
    assert main(["bench", *args, "--no-compare", "--repeats", "1"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.rstrip().endswith("more than the 1 MiB available; lower it")
    assert len(err.strip().splitlines()) == 1


def test_bench_serve(tmp_path, capsys):
    pytest.importorskip("fastapi", reason="bench serve needs the serve extra")
    out = tmp_path / "bench.json"
    assert main(["bench", "serve", "--model", "tiny", "--new-tokens", "8", "--clients", "3", "--repeats", "1",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    rows = {r["impl"]: r for r in report["results"]}
    assert set(rows) == {"serve sequential", "serve concurrent"}
    assert rows["serve sequential"]["batch_size"] == 1 and rows["serve concurrent"]["batch_size"] == 3
    for row in rows.values():
        assert set(row) == ROW_FIELDS and row["tokens_per_s"] > 0
        assert 0 < row["extra"]["tokens"] <= 3 * 8 and row["extra"]["requests"] == 3
    (name, ratio), = report["ratios"].items()
    assert name == "serve concurrent / sequential (3 clients)"
    assert ratio == pytest.approx(rows["serve concurrent"]["tokens_per_s"] / rows["serve sequential"]["tokens_per_s"])
    assert f"ratio {name}: {ratio:.2f}x" in printed
