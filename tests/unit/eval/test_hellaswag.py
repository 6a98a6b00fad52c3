"""HellaSwag scoring (gpt2lab/eval/hellaswag.py): the batched, distributed scorer against an obviously-correct
one-row-at-a-time reference, bad files named by file and line, batches beyond the memory refused. (The command in
processes, torchrun included: tests/e2e/test_eval.py.)"""

from __future__ import annotations

from dataclasses import astuple
import json
import math
import subprocess

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2lab import GPTConfig, cli, get_tokenizer
from gpt2lab.errors import GPT2LabError
from gpt2lab.eval import hellaswag

from tests.conftest import tiny_gpt
from tests.eval_utils import GOOD, WORDS, _assert_one_line_error, _bad


def reference_losses(model, row):
    """One row at a time, no padding, no cropping: the loss of each ending token, summed and averaged."""
    enc = get_tokenizer()
    context = enc.encode(row["ctx"])
    sums, means = [], []
    for ending in row["endings"]:
        ending_tokens = enc.encode(" " + ending)
        tokens = context + ending_tokens
        with torch.no_grad():
            logits, _ = model(torch.tensor([tokens[:-1]]))
        log_probs = F.log_softmax(logits[0].double(), dim=-1)
        # token j is predicted at position j - 1
        losses = [-log_probs[j - 1, tokens[j]].item() for j in range(len(context), len(tokens))]
        sums.append(sum(losses))
        means.append(sum(losses) / len(losses))
    return sums, means


def reference_accuracy(model, rows):
    correct = correct_norm = 0
    for row in rows:
        sums, means = reference_losses(model, row)
        correct += min(range(4), key=sums.__getitem__) == row["label"]
        correct_norm += min(range(4), key=means.__getitem__) == row["label"]
    return correct, correct_norm


def test_batched_scorer_equals_unbatched_reference(hellaswag_file):
    model = tiny_gpt(vocab_size=50257, block_size=64)
    rows = [json.loads(line) for line in hellaswag_file.read_text().splitlines()]
    examples = hellaswag.load_examples(hellaswag_file)
    assert len(examples) == len(rows) == 24

    sums, means = hellaswag.score(model, examples, batch_size=7)
    for i, row in enumerate(rows):
        ref_sums, ref_means = reference_losses(model, row)
        assert sums[i].tolist() == pytest.approx(ref_sums, rel=1e-5)
        assert means[i].tolist() == pytest.approx(ref_means, rel=1e-5)

    correct, correct_norm = reference_accuracy(model, rows)
    assert 0 < correct < len(rows) and 0 < correct_norm < len(rows)  # a test that can tell answers apart
    result = hellaswag.evaluate(model, examples, batch_size=7)
    assert (result.n, result.correct, result.correct_norm) == (len(rows), correct, correct_norm)
    assert result.acc == correct / len(rows) and result.acc_norm == correct_norm / len(rows)


def test_result_does_not_depend_on_batch_size(hellaswag_file):
    model = tiny_gpt(seed=1, vocab_size=50257, block_size=64)
    examples = hellaswag.tokenize(hellaswag.load_examples(hellaswag_file))
    one_by_one = hellaswag.score(model, examples, batch_size=1)
    for batch_size in (5, 11):  # 11 leaves a short last batch
        sums, means = hellaswag.score(model, examples, batch_size=batch_size)
        torch.testing.assert_close(sums, one_by_one[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(means, one_by_one[1], rtol=1e-5, atol=1e-5)
    results = {astuple(hellaswag.evaluate(model, examples, batch_size=b))[:3] for b in (1, 24)}
    assert len(results) == 1


def test_long_rows_are_cropped_from_the_left_keeping_the_ending():
    example = hellaswag.TokenizedExample(context=list(range(100, 120)), endings=[[1, 2, 3]] * 4, label=0)
    tokens, first_target = hellaswag.row_tokens(example, 0, block_size=10)
    assert tokens == list(range(112, 120)) + [1, 2, 3]  # block_size + 1 tokens: 10 inputs, 10 targets
    assert tokens[first_target:] == [1, 2, 3]
    # a model with a short context still scores every ending token
    model = tiny_gpt(vocab_size=50257, block_size=10)
    rows = [dict(ctx=" ".join(WORDS), endings=["a b", "the dog runs", "x", "snow"], label=1)]
    cropped = hellaswag.tokenize([hellaswag.Example(**r) for r in rows])
    sums, means = hellaswag.score(model, cropped, batch_size=1)
    counts = sums / means
    assert counts[0].round().tolist() == [len(e) for e in cropped[0].endings]


class UnigramStub(nn.Module):
    """Predicts the same distribution everywhere: -log p(" the") = 2, -log p(" cat") = 5, the rest share."""

    def __init__(self):
        super().__init__()
        self.config = GPTConfig(vocab_size=50257, block_size=64, n_layer=1, n_head=1, n_embd=8)
        enc = get_tokenizer()
        (self.the,), (self.cat,) = enc.encode(" the"), enc.encode(" cat")
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the stub a device
        rest = (1 - math.exp(-2) - math.exp(-5)) / (50257 - 2)
        log_p = torch.full((50257,), math.log(rest))
        log_p[self.the], log_p[self.cat] = -2.0, -5.0
        self.register_buffer("log_p", log_p)

    def forward(self, idx, targets=None):
        return self.log_p.expand(*idx.shape, -1) + self.anchor, None


def test_acc_and_acc_norm_disagree_on_a_crafted_case():
    # " the" x 6: summed loss 12, mean 2. " cat": summed 5, mean 5. " dog dog dog": 3 tokens of ~11 each.
    # The long low-mean ending wins acc_norm; the short one wins acc.
    endings = [" ".join(["the"] * 6), "cat", "dog dog dog", "dog dog dog dog"]
    examples = [
        hellaswag.Example(ctx="Once", endings=endings, label=0),  # right for acc_norm only
        hellaswag.Example(ctx="Twice", endings=endings, label=1),  # right for acc only
        hellaswag.Example(ctx="Thrice", endings=[endings[i] for i in (1, 0, 2, 3)], label=1),  # acc_norm only
    ]
    stub = UnigramStub()
    assert hellaswag.tokenize(examples)[0].endings[0] == [stub.the] * 6
    sums, means = hellaswag.score(stub, examples, batch_size=2)
    assert sums[0, :2].tolist() == pytest.approx([12.0, 5.0], abs=1e-3)
    assert means[0, :2].tolist() == pytest.approx([2.0, 5.0], abs=1e-3)
    result = hellaswag.evaluate(stub, examples, batch_size=2)
    assert (result.correct, result.correct_norm) == (1, 2)
    assert result.acc == pytest.approx(1 / 3) and result.acc_norm == pytest.approx(2 / 3)


def _refuse_to_compile(graph_module, example_inputs):
    raise AssertionError("evaluation must not compile the model")


def test_a_compiled_model_is_evaluated_through_its_eager_module(hellaswag_file):
    model = tiny_gpt(vocab_size=50257, block_size=64)
    examples = hellaswag.load_examples(hellaswag_file, limit=8)
    assert len(examples) == 8
    expected = hellaswag.evaluate(model, examples, batch_size=3)
    compiled = torch.compile(model, backend=_refuse_to_compile)  # compiles lazily: only if it is called
    got = hellaswag.evaluate(compiled, examples, batch_size=3)
    assert (got.correct, got.correct_norm, got.n) == (expected.correct, expected.correct_norm, 8)


def test_bad_input_in_the_library_names_file_and_line(tmp_path):
    with pytest.raises(GPT2LabError, match=r"bad.jsonl:2: missing field 'label'"):
        hellaswag.load_examples(_bad(tmp_path, [GOOD[0], {k: v for k, v in GOOD[1].items() if k != "label"}]))
    with pytest.raises(GPT2LabError, match=r"bad.jsonl:1: endings must be a list of 4"):
        hellaswag.load_examples(_bad(tmp_path, [{**GOOD[0], "endings": GOOD[0]["endings"] + ["x"]}]))
    with pytest.raises(GPT2LabError, match="label must be"):
        hellaswag.load_examples(_bad(tmp_path, [{**GOOD[0], "label": -1}]))
    nested = _bad(tmp_path, GOOD)
    nested.write_text(nested.read_text() + "[" * 100_000 + "\n")  # the JSON decoder recurses per bracket
    with pytest.raises(GPT2LabError, match=rf"bad.jsonl:{len(GOOD) + 1}: not valid JSON \(nested too deeply\)"):
        hellaswag.load_examples(nested)
    with pytest.raises(GPT2LabError, match="limit must be"):
        hellaswag.load_examples(_bad(tmp_path, GOOD), limit=0)


def test_a_batch_too_large_for_memory_is_refused_in_one_line(tiny_model_dir, hellaswag_file, monkeypatch, capsys):
    from gpt2lab.runtime import memory

    # The tiny model has GPT-2's 50,257-token vocabulary: an example's 4 endings of up to ~10 tokens need up to
    # ~12 MB of logits. 40 MiB "available": one example per batch fits, all 24 at once do not.
    monkeypatch.setattr(memory, "available_bytes", lambda device: 40 * 2**20)
    args = ["eval", str(tiny_model_dir), "--data", str(hellaswag_file), "--device", "cpu"]
    assert cli.main([*args, "--batch-size", "1"]) == 0
    capsys.readouterr()
    code = cli.main([*args, "--batch-size", "24"])
    _assert_one_line_error(subprocess.CompletedProcess([], code, "", capsys.readouterr().err),
                           "--batch-size 24 would need ~", "more than the 40 MiB available; lower it")
    assert code == 2


def test_every_rank_runs_as_many_forward_passes_and_the_ranks_together_count_each_example_once(hellaswag_file,
                                                                                               monkeypatch):
    """Two ranks over 23 examples (12 and 11), seen from one process: the rank with fewer scores a padding copy
    in an equal number of forward passes (a sharded model computes each with every rank), and leaves it out."""
    model = tiny_gpt(vocab_size=50257, block_size=64)
    examples = hellaswag.tokenize(hellaswag.load_examples(hellaswag_file))[:23]
    whole = hellaswag.evaluate(model, examples, batch_size=4)
    parts, passes = [], []
    real = hellaswag.ending_losses
    monkeypatch.setattr(hellaswag.distributed, "all_reduce_sum", lambda t: t)
    for rank in (0, 1):
        monkeypatch.setattr(hellaswag.distributed, "rank_and_world", lambda rank=rank: (rank, 2))
        calls = []
        monkeypatch.setattr(hellaswag, "ending_losses", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
        parts.append(hellaswag.evaluate(model, examples, batch_size=4))
        passes.append(len(calls))
    assert passes == [3, 3]  # 12 / 4 and (11 + 1 copy) / 4
    assert [p.n for p in parts] == [12, 11]
    assert sum(p.correct for p in parts) == whole.correct and sum(p.correct_norm for p in parts) == whole.correct_norm
