"""SlotCache (gpt2lab/serve/slots.py): a server's KV cache, a row per sequence with its own length."""

import torch

from gpt2lab.serve.slots import SlotCache

from tests.conftest import ODD, tiny_gpt


def test_slot_cache_rows_of_different_lengths_give_each_sequence_its_own_logits(monkeypatch):
    """Prompts of different lengths enter at different steps; a row is freed and refilled from the last one.
    Every logit equals the sequence's own full forward pass, computed without any cache."""
    model = tiny_gpt(seed=2)
    g = torch.Generator().manual_seed(0)
    sequences = [torch.randint(0, ODD["vocab_size"], (n,), generator=g).tolist() for n in (5, 9, 2, 7)]
    with monkeypatch.context() as m:  # memory the allocator recycles may hold anything, NaN included
        m.setattr(torch, "empty", lambda shape, **kw: torch.full(shape, float("nan"), **kw))
        cache = SlotCache(model, rows=3)
    rows = []  # rows[i]: (sequence number, tokens so far)

    def check(checked_rows, row_logits):
        assert len(checked_rows) == len(row_logits)
        for (number, tokens), logits in zip(checked_rows, row_logits):
            expected, _ = model(torch.tensor([tokens]))
            torch.testing.assert_close(logits, expected[0, -1], atol=1e-5, rtol=1e-5, msg=f"sequence {number}")

    def decode():
        nxt = torch.randint(0, ODD["vocab_size"], (len(rows),), generator=g).tolist()
        for row, token in zip(rows, nxt):
            row[1].append(token)
        hidden = model.hidden_states(torch.tensor(nxt)[:, None], cache=cache.decode(len(rows)))
        check(rows, model.lm_head(hidden[:, -1]))

    def prefill(numbers):
        prompts = [sequences[n] for n in numbers]
        width = max(map(len, prompts))
        idx = torch.tensor([p + [0] * (width - len(p)) for p in prompts])
        hidden = model.hidden_states(idx, cache=cache.prefill(len(rows), [len(p) for p in prompts]))
        rows.extend((n, list(p)) for n, p in zip(numbers, prompts))
        check(rows[-len(numbers):], model.lm_head(hidden[torch.arange(len(prompts)), torch.tensor([len(p) for p in prompts]) - 1]))

    with torch.no_grad():
        prefill([0, 1])
        decode()
        prefill([2])
        for _ in range(3):
            decode()
        cache.move(2, 0)  # sequence 0 is done: the last row takes its place
        rows[0] = rows.pop()
        prefill([3])
        for _ in range(4):
            decode()
    assert cache.lengths[:3] == [len(tokens) for _, tokens in rows]
