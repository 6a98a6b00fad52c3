"""`gpt2lab bench generate` (gpt2lab/tools/bench/generate.py) on a tiny config: the rows, the ratios and the bandwidth
bound. No timing assertions."""

import pytest

from tests.bench_utils import run_bench


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
