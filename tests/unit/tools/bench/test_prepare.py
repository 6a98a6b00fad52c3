"""`gpt2lab bench prepare` (gpt2lab/tools/bench/prepare.py): gpt2lab's tokenizer path against raw tiktoken on the
Shakespeare corpus. No timing assertions."""

from tests.bench_utils import run_bench


def test_bench_prepare(tmp_path, capsys):
    report = run_bench(tmp_path, capsys, "prepare", "--text-repeat", "1")
    assert {r["impl"] for r in report["results"]} == {"gpt2lab", "tiktoken"}
    assert report["details"]["documents"] == 42 and report["details"]["tokens"] > 1_500_000
