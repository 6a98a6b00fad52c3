"""TokenLoader(align_to_documents=True): rows begin at document starts where that costs less than a row, long
documents continue, and the loader's promises hold as without it (the same chunks for any processes x
accumulation, exact resume with other processes, a seeded order)."""

import json

import numpy as np
import pytest

from gpt2lab.data import DataError, TokenLoader
from gpt2lab.data.loader import document_rows

EOT = 50256


def make_documents(path, shards):
    """Shards of documents (a list of document lengths per shard); each token is its global position except the
    <|endoftext|> that begins every document, so a row tells where it came from."""
    path.mkdir(parents=True, exist_ok=True)
    entries, position = [], 0
    for i, lengths in enumerate(shards):
        tokens = np.arange(position, position + sum(lengths), dtype="<u2")
        tokens[np.cumsum([0, *lengths[:-1]])] = EOT
        name = f"train_{i:06d}.bin"
        tokens.tofile(path / name)
        entries.append({"file": name, "tokens": int(sum(lengths)), "documents": len(lengths), "sha256": "x"})
        position += sum(lengths)
    manifest = {"format": "gpt2lab-shards/1", "tokenizer": "gpt2", "vocab_size": 50257, "eot_token": EOT,
                "dtype": "uint16", "source": "test", "args": {}, "splits": {"train": entries}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_rows_begin_at_documents_skip_short_tails_and_continue_long_documents():
    T = 10
    lengths = [4, 7, 30, 12, 25]  # starts 0, 4, 11, 41, 53; 78 tokens
    tokens = np.arange(78)
    tokens[[0, 4, 11, 41, 53]] = EOT
    rows = document_rows(tokens, EOT, T).tolist()
    # 0: ends at 10, document 11 is 1 away -> 11; 11 + 10 = 21, next start 41 is 20 away (a long document):
    # continue at 21, then 31; 31 + 10 = 41 is a start; 41 -> 51, next 53 is 2 away -> 53; 53 -> 63 -> (73 > 67)
    assert rows == [0, 11, 21, 31, 41, 53, 63]
    assert sum(lengths) == 78 and all(r + T + 1 <= 78 for r in rows)
    gaps = np.diff(rows)
    assert (gaps >= T).all() and (gaps < 2 * T).all()  # never overlapping, never more than a row skipped


def test_every_row_of_short_documents_begins_with_endoftext(tmp_path):
    rng = np.random.default_rng(0)
    data = make_documents(tmp_path / "d", [list(rng.integers(3, 16, 300)), list(rng.integers(3, 16, 200))])
    loader = TokenLoader(data, batch_size=3, seq_len=16, seed=2, align_to_documents=True)
    targets = []
    for _ in range(loader.batches_per_epoch):
        x, y = loader.next_batch()
        assert x.shape == y.shape == (3, 16)
        assert (x[:, 0] == EOT).all()  # each row opens with a document's <|endoftext|>
        assert (y[:, :-1] == x[:, 1:]).all()
        targets.append(y.flatten())
    targets = np.concatenate(targets)
    positions = targets[targets != EOT]
    assert len(positions) == len(set(positions.tolist()))  # no token is a target twice in an epoch
    unaligned = TokenLoader(data, batch_size=3, seq_len=16, seed=2)
    assert (unaligned.next_batch()[0][:, 0] != EOT).any()  # the option is what aligns them
    assert 0.3 < loader.tokens_kept < 1 and unaligned.tokens_kept > 0.95


def aligned_loaders(data, world_size, grad_accum):
    return [TokenLoader(data, batch_size=2, seq_len=12, rank=r, world_size=world_size, grad_accum=grad_accum,
                        seed=4, align_to_documents=True) for r in range(world_size)]


def step_rows(loaders, grad_accum, steps):
    """Each step's rows over all ranks, named by their second token (the first is <|endoftext|> or a position)."""
    return [sorted(int(r) for _ in range(grad_accum) for loader in loaders for r in loader.next_batch()[0][:, 1])
            for _ in range(steps)]


MIXED = [[5, 9, 40, 3, 8, 70, 6], [11, 2, 90, 7], [13, 13, 13, 13, 13, 13]]  # short and long documents, 3 shards


def test_the_same_rows_for_any_processes_x_accumulation_and_exact_resume(tmp_path):
    data = make_documents(tmp_path / "d", MIXED)
    per_epoch = aligned_loaders(data, 1, 4)[0].steps_per_epoch
    assert per_epoch >= 3
    reference = step_rows(aligned_loaders(data, 1, 4), 4, 3 * per_epoch)
    for world_size, grad_accum in [(2, 2), (4, 1)]:
        assert step_rows(aligned_loaders(data, world_size, grad_accum), grad_accum, 3 * per_epoch) == reference
    assert reference[:per_epoch] != reference[per_epoch:2 * per_epoch]  # a new order each epoch
    for stop in (1, per_epoch, per_epoch + 1):
        saved = aligned_loaders(data, 2, 2)
        step_rows(saved, 2, stop)
        state = json.loads(json.dumps(saved[1].state_dict()))
        resumed = aligned_loaders(data, 4, 1)
        for loader in resumed:
            loader.load_state_dict(state)
        assert step_rows(resumed, 1, per_epoch) == reference[stop:stop + per_epoch]


def test_resume_refuses_the_other_alignment(tmp_path):
    data = make_documents(tmp_path / "d", MIXED)
    aligned = aligned_loaders(data, 1, 1)[0].state_dict()
    with pytest.raises(DataError, match="align_to_documents=1"):
        TokenLoader(data, batch_size=2, seq_len=12, seed=4).load_state_dict(aligned)
    old = TokenLoader(data, batch_size=2, seq_len=12, seed=4).state_dict()
    del old["align_to_documents"]  # a state from before the option: unaligned
    with pytest.raises(DataError, match="align_to_documents=0"):
        aligned_loaders(data, 1, 1)[0].load_state_dict(old)
