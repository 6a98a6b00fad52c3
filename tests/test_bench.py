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
    rows = {(r["impl"], r["dtype"]): r for r in report["results"]}
    for (impl, dtype), row in rows.items():
        assert 0 < row["extra"]["fraction_of_matmul_peak"]
        # the step's products timed alone, against the same dtype's whole step
        alone = report["details"]["matmuls_alone_ms"][dtype]
        assert row["extra"]["matmuls_alone_ms"] == alone > 0
        assert row["extra"]["matmul_share"] == pytest.approx(alone / row["ms_per_iter"])
        other = "float32" if dtype == "bfloat16" else "bfloat16"  # each row against its own other dtype
        assert row["extra"][f"vs_{other}"] == pytest.approx(row["tokens_per_s"] / rows[(impl, other)]["tokens_per_s"])
    assert report["details"]["flops_per_token"] > 6 * report["details"]["params"]
    assert "gpt2lab float32 / transformers float32 (batch 2)" in report["ratios"]


def test_step_matmuls_are_the_products_of_a_training_step():
    """Their FLOPs are exactly a step's: 3 products (forward, input and weight gradients) of 2 x tokens x each
    projection's weights (head included), and attention's 6 products of 2 x B x T x T x C per layer."""
    from gpt2lab.tools.bench import BENCH_CONFIGS
    from gpt2lab.tools.bench.train import step_matmul_shapes
    from gpt2lab.model.gpt import GPT

    config, B, T = BENCH_CONFIGS["tiny"], 3, 16
    shapes = step_matmul_shapes(config, B, T)
    flops = sum(2 * b * m * k * n for b, m, k, n, _, _ in shapes)
    model = GPT(config)
    matmul_weights = sum(p.numel() for name, p in model.named_parameters() if name.endswith("weight") and p.dim() == 2
                         and "wpe" not in name)  # the blocks' projections and the tied wte/head
    assert flops == 6 * B * T * matmul_weights + config.n_layer * 6 * 2 * B * T * T * config.n_embd
    # every projection's weight gradient multiplies a transposed activation by the output gradient
    assert sum(1 for s in shapes if s[0] == 1 and s[4]) == 4 * config.n_layer + 1


def test_bench_generate(tmp_path, capsys):
    report = run_bench(tmp_path, capsys, "generate", "--model", "tiny", "--new-tokens", "8", "--batch-sizes", "1,2",
                       "--no-cache-baseline")
    assert {(r["impl"], r["batch_size"]) for r in report["results"]} == {
        ("gpt2lab", 1), ("gpt2lab", 2), ("transformers", 1), ("transformers", 2), ("no-cache loop", 1),
        ("no-cache loop", 2)}
    assert "gpt2lab float32 / no-cache loop float32 (batch 1)" in report["ratios"]
    # every row against the bandwidth bound: all the weights read once per step, for every row of the batch
    bounds = {(r["impl"], r["dtype"], r["batch_size"]): r["extra"]["bandwidth_bound_tokens_per_s"]
              for r in report["results"]}
    one, two = bounds[("gpt2lab", "float32", 1)], bounds[("gpt2lab", "float32", 2)]
    assert one > 0 and two == pytest.approx(2 * one)
    assert bounds[("transformers", "float32", 1)] == pytest.approx(one)
    for row in report["results"]:
        bound = bounds[(row["impl"], row["dtype"], row["batch_size"])]
        assert row["extra"]["fraction_of_bound"] == pytest.approx(row["tokens_per_s"] / bound)
    assert report["details"]["read_bandwidth_gb_s"] > 0


def test_bench_prepare(tmp_path, capsys):
    report = run_bench(tmp_path, capsys, "prepare", "--text-repeat", "1")
    assert {r["impl"] for r in report["results"]} == {"gpt2lab", "tiktoken"}
    assert report["details"]["documents"] == 42 and report["details"]["tokens"] > 1_500_000


@pytest.mark.parametrize("args, message", [
    (["train", "--model", "tiny", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["train", "--model", "tiny", "--seq-len", "4096"], "--seq-len (4096) is longer than the model's context of 128 tokens"),
    (["generate", "--dtypes", "float8"], "unknown dtype 'float8'"),
    (["train", "--device", "tpu"], "unknown device 'tpu'"),
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
