"""`gpt2lab bench train` (gpt2lab/tools/bench/train.py) on a tiny config: well-formed JSON, each dtype against the
other, and the matmuls of a step timed alone are exactly its products. No timing assertions. (Every mode shares
tests/bench_utils.py's checks of the report; the flags: tests/unit/cli/test_bench.py.)"""

import pytest

from tests.bench_utils import run_bench


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


def test_bench_train_compile_runs_ours_through_torch_compile_and_holds_the_peak_against_the_planner(
        tmp_path, capsys, monkeypatch):
    """--compile compiles our model (not transformers'), as runtime.compile does; every row's measured peak is set
    against the planner's estimate for the step (the GPU check's speed stage reads both)."""
    import torch

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compiled.append(type(model).__name__) or model)
    report = run_bench(tmp_path, capsys, "train", "--model", "tiny", "--batch-size", "2", "--seq-len", "16",
                       "--iters", "1", "--dtypes", "float32", "--compile")
    assert compiled == ["GPT"] and report["details"]["compiled"] is True
    estimate = report["details"]["planner_estimate_mb"]
    assert estimate > 0
    row = next(r for r in report["results"] if r["impl"] == "gpt2lab")
    assert row["extra"]["peak_over_planner_estimate"] == pytest.approx(row["peak_mem_mb"] / estimate)
    assert "peak_reserved_mb" not in row["extra"]  # the CUDA allocator's number; a CPU has none
