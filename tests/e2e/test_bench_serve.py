"""`gpt2lab bench serve`: a real server on a loopback port, N concurrent clients against the same requests one by one,
well-formed JSON. No timing assertions."""

import json

import pytest

from gpt2lab.cli import main

from tests.bench_utils import ROW_FIELDS


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
