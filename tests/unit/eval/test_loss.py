"""Held-out loss (gpt2lab/eval/loss.py): equal to the model's own loss, every token a target exactly once under the
sliding window, shared by ranks without overlap."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2lab import GPTConfig, cli, get_tokenizer
from gpt2lab.errors import GPT2LabError
from gpt2lab.eval import loss

from tests.conftest import tiny_gpt
from tests.eval_utils import TEXT


def test_text_file_loss_equals_the_models_own_loss(tmp_path):
    model = tiny_gpt(vocab_size=50257, block_size=128)
    path = tmp_path / "short.txt"
    path.write_text(TEXT)
    tokens = loss.text_file_tokens(path)
    assert tokens[0] == 50256 and tokens[1:].tolist() == get_tokenizer().encode(TEXT)
    assert len(tokens) <= 129  # one window: the model's forward pass sees all of it
    x = torch.tensor(tokens[:-1])[None]
    y = torch.tensor(tokens[1:])[None]
    with torch.no_grad():
        _, own_loss = model(x, y)
    result = loss.evaluate_loss(model, loss.load_streams(path))
    assert result.tokens == len(tokens) - 1
    assert result.loss == pytest.approx(own_loss.item(), rel=1e-6)
    assert result.perplexity == pytest.approx(math.exp(own_loss.item()), rel=1e-6)


def test_non_overlapping_windows_equal_the_token_weighted_mean_of_chunk_losses():
    model = tiny_gpt(vocab_size=1011, block_size=37)
    tokens = torch.randint(0, 1011, (1 + 8 * 37,), generator=torch.Generator().manual_seed(0))
    total, count = 0.0, 0
    for start in range(0, 8 * 37, 37):  # chunks of 37 inputs, targets shifted by one
        x, y = tokens[start : start + 37], tokens[start + 1 : start + 38]
        with torch.no_grad():
            _, chunk_loss = model(x[None], y[None])
        total += chunk_loss.item() * len(y)
        count += len(y)
    for batch_size in (1, 3):
        result = loss.evaluate_loss(model, tokens.numpy(), batch_size=batch_size)
        assert result.tokens == count == 8 * 37
        assert result.loss == pytest.approx(total / count, rel=1e-6)


@pytest.mark.parametrize("n_tokens, seq_len, stride", [(2, 5, 5), (100, 16, 16), (100, 16, 5), (101, 16, 1), (7, 16, 8)])
def test_sliding_windows_cover_every_target_exactly_once(n_tokens, seq_len, stride):
    scored = []
    for w in loss.windows(n_tokens, seq_len, stride):
        assert 0 <= w.start < w.first_target <= w.end < n_tokens
        assert w.end - w.start <= seq_len  # the inputs fit the model
        assert w.end - w.first_target + 1 <= stride
        for target in range(w.first_target, w.end + 1):
            # as much left context as the stride allows: seq_len - stride + 1 tokens, or all there are
            assert target - w.start >= min(target, seq_len - stride + 1)
            scored.append(target)
    assert scored == list(range(1, n_tokens))


class BigramStub(nn.Module):
    """Logits that depend on the previous token only, so a target's loss is the same in whatever window."""

    def __init__(self, vocab_size=101, block_size=16):
        super().__init__()
        self.config = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=1, n_head=1, n_embd=8)
        self.table = nn.Embedding(vocab_size, vocab_size)

    def forward(self, idx, targets=None):
        return self.table(idx), None


def test_sliding_window_loss_scores_each_token_once():
    torch.manual_seed(0)
    stub = BigramStub()
    tokens = torch.randint(0, 101, (203,))
    with torch.no_grad():  # the bigram loss of every target 1 .. 202, each counted once
        expected = F.cross_entropy(stub.table(tokens[:-1]), tokens[1:]).item()
    for stride in (16, 5, 1):
        result = loss.evaluate_loss(stub, tokens, stride=stride, batch_size=4)
        assert result.tokens == 202
        assert result.loss == pytest.approx(expected, rel=1e-6)


def test_streams_are_scored_separately_and_max_tokens_cuts(tmp_path):
    torch.manual_seed(0)
    stub = BigramStub()
    shards = [np.random.default_rng(i).integers(0, 101, n).astype(np.uint16) for i, n in enumerate((50, 30))]
    both = loss.evaluate_loss(stub, shards)
    assert both.tokens == 49 + 29  # a shard's first token has no context
    first = loss.evaluate_loss(stub, shards[0])
    second = loss.evaluate_loss(stub, shards[1])
    assert both.loss == pytest.approx((first.loss * 49 + second.loss * 29) / 78, rel=1e-6)
    assert loss.evaluate_loss(stub, shards, max_tokens=60).tokens == 60
    assert loss.evaluate_loss(stub, shards, max_tokens=10).loss == pytest.approx(
        loss.evaluate_loss(stub, shards[0][:11]).loss, rel=1e-6)


def test_bad_arguments_are_user_errors(tmp_path):
    stub = BigramStub()
    tokens = np.arange(50) % 101
    with pytest.raises(GPT2LabError, match="stride must be"):
        loss.evaluate_loss(stub, tokens, stride=17)
    with pytest.raises(GPT2LabError, match="seq_len must be"):
        loss.evaluate_loss(stub, tokens, seq_len=17)
    with pytest.raises(GPT2LabError, match="at least 2 tokens"):
        loss.evaluate_loss(stub, np.array([3]))
    with pytest.raises(GPT2LabError, match="token id 500, beyond the model.s vocabulary"):
        loss.evaluate_loss(stub, np.array([3, 500, 4]))
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(GPT2LabError, match="empty"):
        loss.load_streams(tmp_path / "empty.txt")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(GPT2LabError, match="UTF-8"):
        loss.load_streams(tmp_path / "binary.txt")


def test_ranks_share_the_windows_without_overlap(monkeypatch):
    # What each of 2 torchrun ranks computes before the all-reduce, here in one process: together, everything once.
    torch.manual_seed(0)
    stub = BigramStub()
    tokens = torch.randint(0, 101, (150,))
    full = loss.evaluate_loss(stub, tokens, stride=5, batch_size=2)
    parts = []
    for rank in (0, 1):
        monkeypatch.setattr(loss.distributed, "rank_and_world", lambda rank=rank: (rank, 2))
        parts.append(loss.evaluate_loss(stub, tokens, stride=5, batch_size=2))
    assert sum(p.tokens for p in parts) == full.tokens == 149 and min(p.tokens for p in parts) > 0
    assert sum(p.loss * p.tokens for p in parts) / full.tokens == pytest.approx(full.loss, rel=1e-6)


def test_a_batch_too_large_for_memory_is_refused_in_one_line(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from gpt2lab.runtime import memory

    # Windows of 64 tokens (the tiny model's context) over GPT-2's 50,257-token vocabulary: ~19 MB of logits each.
    # 50 MiB "available": 2 windows per batch fit, 8 do not.
    monkeypatch.setattr(memory, "available_bytes", lambda device: 50 * 2**20)
    path = tmp_path / "long.txt"
    path.write_text(TEXT * 10)  # ~1,000 tokens: more than 8 windows
    args = ["eval", str(tiny_model_dir), "--task", "loss", "--data", str(path), "--device", "cpu"]
    assert cli.main([*args, "--batch-size", "2"]) == 0
    capsys.readouterr()
    assert cli.main([*args, "--batch-size", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert re.match(r"gpt2lab eval: error: --batch-size 8 would need ~\d+ MiB for one forward pass", err)
    assert err.rstrip().endswith("more than the 50 MiB available; lower it")


def test_fixed_batches_loss_is_the_token_mean_and_leaves_the_model_trainable():
    """The trainer's val loss (fixed_batches_loss, through summed_loss: inference mode) equals the mean of the
    model's own batch losses, restores train mode, and a training step after it still works."""
    model = tiny_gpt()
    g = torch.Generator().manual_seed(0)
    batches = [(x[:, :-1], x[:, 1:]) for x in (torch.randint(0, 256, (2, 17), generator=g) for _ in range(3))]
    model.train()
    with torch.no_grad():
        model.eval()
        expected = sum(model(x, y)[1].item() for x, y in batches) / 3
        model.train()
    assert loss.fixed_batches_loss(model, batches, torch.device("cpu"), None) == pytest.approx(expected, rel=1e-6)
    assert model.training
    _, train_loss = model(*batches[0])
    train_loss.backward()  # no inference tensor got into the parameters or the graph
    assert all(p.grad is not None for p in model.parameters())


def test_fixed_batches_loss_of_an_fsdp_sharded_model_equals_the_whole_model_and_training_goes_on():
    """A sharded model is evaluated under no_grad, not inference mode: its all-gathered buffers are reused by the
    training steps after it (an inference tensor there would make the next step fail)."""
    from gpt2lab.train.config import OptimSection
    from gpt2lab.train.optim import make_optimizer
    from gpt2lab.train.step import TrainStep, repeat
    from tests.train_utils import one_process_group, tiny_sharded

    cpu = torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    batches = [(x[:, :-1], x[:, 1:]) for x in (torch.randint(0, 128, (2, 17), generator=g) for _ in range(2))]
    with one_process_group():
        sharded, whole = tiny_sharded()
        assert loss.fixed_batches_loss(sharded.raw, batches, cpu, None) == pytest.approx(
            loss.fixed_batches_loss(whole, batches, cpu, None), rel=1e-6)
        step = TrainStep(sharded, make_optimizer(sharded.raw, OptimSection(), cpu), device="cpu")
        step(0, repeat(batches[0]))
        step(1, repeat(batches[1]))
        assert math.isfinite(loss.fixed_batches_loss(sharded.raw, batches, cpu, None))
