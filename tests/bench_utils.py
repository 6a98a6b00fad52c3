"""Helpers for the `gpt2lab bench` tests: one benchmark run in-process, its JSON report and printed table checked."""

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
