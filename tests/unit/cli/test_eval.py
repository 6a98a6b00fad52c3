"""`gpt2lab eval` in-process (gpt2lab/cli/eval.py): bad HellaSwag files and bad loss arguments are one line; the
loss of prepared shards is the model's own. (In real processes, torchrun included: tests/e2e/test_eval.py.)"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from gpt2lab import cli, load_model

from tests.eval_utils import GOOD, TEXT, _assert_one_line_error, _bad


@pytest.mark.parametrize(
    "content, needles",
    [
        pytest.param(json.dumps(GOOD[0]) + "\n" + '{"ctx": "broken", \n', ["bad.jsonl:2", "not valid JSON"],
                     id="malformed-line"),
        pytest.param([GOOD[0], GOOD[1], {**GOOD[2], "label": 4}], ["bad.jsonl:3", "label", "0, 1, 2 or 3"],
                     id="label-out-of-range"),
        pytest.param([{**GOOD[0], "endings": GOOD[0]["endings"][:3]}], ["bad.jsonl:1", "4", "got 3"],
                     id="three-endings"),
    ],
)
def test_bad_hellaswag_files_give_one_line_errors(tmp_path, capsys, content, needles):
    # In-process through cli.main, what the `gpt2lab` script runs (tests/e2e/test_eval.py: the rest, in processes).
    code = cli.main(["eval", "gpt2", "--data", str(_bad(tmp_path, content))])
    captured = capsys.readouterr()
    _assert_one_line_error(subprocess.CompletedProcess([], code, captured.out, captured.err), *needles)


@pytest.mark.parametrize("args, needle", [
    ([], "--task loss needs --data"),
    (["--data", "nowhere.txt"], "nowhere.txt does not exist"),
    (["--data", "shard_000.bin"], "pass the prepared data directory"),
])
def test_cli_loss_bad_input(tmp_path, monkeypatch, capsys, args, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shard_000.bin").write_bytes(b"\0\0")
    assert cli.main(["eval", "gpt2", "--task", "loss", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err


def test_loss_on_prepared_shards_cli_and_library(tmp_path, tiny_model_dir, capsys):
    from gpt2lab.data import PrepareConfig, prepare, split_tokens

    docs = [{"text": TEXT}, {"text": "A short second document."}, {"text": TEXT.upper()}]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    data = tmp_path / "data"
    prepare(PrepareConfig(sources=[str(tmp_path / "docs.jsonl")], out=str(data), val_docs=2, progress=False,
                          threads=1), log=lambda line: None)
    model = load_model(tiny_model_dir)
    shards = split_tokens(data, "val")
    # the model's own loss over the val split, in chunks of its context (64): the default stride
    total, count = 0.0, 0
    for shard in shards:
        tokens = torch.from_numpy(shard.astype(np.int64))
        for start in range(0, len(tokens) - 1, 64):
            x, y = tokens[start : start + 64], tokens[start + 1 : start + 65]
            if len(y) < len(x):  # the last window reaches back for a full context (see loss.windows)
                x, y = tokens[-65:-1], tokens[-64:]
                y = torch.where(torch.arange(64) >= 64 - (len(tokens) - 1 - start), y, -100)
            with torch.no_grad():
                _, chunk_loss = model(x[None], y[None])
            n = int((y != -100).sum())
            total, count = total + chunk_loss.item() * n, count + n
    assert count == sum(len(s) - 1 for s in shards) > 64
    # float32, as the reference above: `--dtype auto` is bf16 on a CPU with native bf16 (AVX512-BF16, AMX)
    assert cli.main(["eval", str(tiny_model_dir), "--task", "loss", "--data", str(data), "--dtype", "float32",
                     "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["dtype"] == "float32" and record["tokens"] == count
    assert record["loss"] == pytest.approx(total / count, rel=1e-6)
    # --dtype auto (the default) picks what `runtime.precision = auto` trains in: bf16 only where it is native
    from gpt2lab.runtime.device import native_bf16

    assert cli.main(["eval", str(tiny_model_dir), "--task", "loss", "--data", str(data), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["dtype"] == ("bfloat16" if native_bf16(torch.device("cpu")) else "float32")
    assert record["tokens"] == count and record["loss"] == pytest.approx(total / count, rel=1e-2)
    assert cli.main(["eval", str(tiny_model_dir), "--task", "loss", "--data", str(data), "--split", "test"]) == 2
    assert "no split 'test'" in capsys.readouterr().err


def test_a_cpu_loss_evaluation_keeps_its_freed_logits_memory(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """Every batch frees ~200 MB of logits (the demo model); glibc would unmap and page-fault them in again."""
    from gpt2lab.runtime import device

    calls = []
    monkeypatch.setattr(device, "keep_freed_memory", lambda: calls.append(1))
    path = tmp_path / "t.txt"
    path.write_text(TEXT)
    assert cli.main(["eval", str(tiny_model_dir), "--task", "loss", "--data", str(path), "--device", "cpu",
                     "--dtype", "float32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dtype"] == "float32" and calls == [1]
