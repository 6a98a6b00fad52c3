"""TokenLoader (gpt2lab/data/loader.py): coverage per epoch across ranks, disjoint ranks, seeded shuffling, the same
chunks per step for any (processes x accumulation), exact resume (with another number of processes too), validation;
and with align_to_documents: rows that begin at document starts where that costs less than a row, long documents
continued, the same promises."""

import json

import numpy as np
import pytest

from gpt2lab.data import DataError, TokenLoader, read_manifest, split_tokens
from gpt2lab.data.loader import document_rows


def make_dataset(path, shard_lengths, split="train", **manifest_overrides):
    """Shards whose tokens are their global positions (all distinct), so a batch tells where it came from."""
    path.mkdir(parents=True, exist_ok=True)
    shards, start = [], 0
    for i, n in enumerate(shard_lengths):
        name = f"{split}_{i:06d}.bin"
        np.arange(start, start + n, dtype="<u2").tofile(path / name)
        shards.append({"file": name, "tokens": n, "documents": 1, "sha256": "x"})
        start += n
    manifest = {"format": "gpt2lab-shards/1", "tokenizer": "gpt2", "vocab_size": 50257, "eot_token": 50256,
                "dtype": "uint16", "source": "test", "args": {}, "splits": {split: shards}, **manifest_overrides}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def epoch_batches(loader):
    return [loader.next_batch() for _ in range(loader.batches_per_epoch)]


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_one_epoch_covers_every_position_once_across_ranks(tmp_path, world_size):
    data = make_dataset(tmp_path / "d", [1000, 37, 2500, 611])  # odd sizes: chunks straddle shard ends
    B, T = 3, 17
    seen = []
    for rank in range(world_size):
        loader = TokenLoader(data, batch_size=B, seq_len=T, rank=rank, world_size=world_size, seed=5)
        rank_tokens = []
        for x, y in epoch_batches(loader):
            assert x.shape == y.shape == (B, T) and x.dtype == y.dtype == __import__("torch").int64
            assert (y.flatten()[:-1] == x.flatten()[1:]).all()  # y is x shifted by one
            rank_tokens.append(x.flatten().numpy())
        seen.append(np.concatenate(rank_tokens))
    for a in range(world_size):  # ranks are disjoint
        for b in range(a + 1, world_size):
            assert not set(seen[a]) & set(seen[b])
    union = np.concatenate(seen)
    assert len(union) == len(set(union.tolist()))  # no position twice
    total = 1000 + 37 + 2500 + 611
    chunks = (total - 1) // (B * T)
    assert len(union) == (chunks // world_size) * world_size * B * T  # all but the final partial batch(es)
    assert total - len(union) < (world_size + 1) * B * T


def step_chunks(loaders, grad_accum, steps):
    """The chunks (named by their first token) each of `steps` optimizer steps takes over all ranks, sorted."""
    return [sorted(int(loader.next_batch()[0][0, 0]) for _ in range(grad_accum) for loader in loaders)
            for _ in range(steps)]


def rank_loaders(data, world_size, grad_accum, **kwargs):
    return [TokenLoader(data, batch_size=3, seq_len=17, rank=r, world_size=world_size, grad_accum=grad_accum, seed=5,
                        **kwargs) for r in range(world_size)]


ODD_SHARDS = [1000, 37, 2500, 611]  # 4148 tokens = 81 chunks of 3 x 17 (+ 16 left over): an odd number


@pytest.mark.parametrize("layouts", [[(1, 2), (2, 1)], [(1, 4), (2, 2), (4, 1)], [(1, 3), (3, 1)]])
def test_each_step_takes_the_same_chunks_for_any_processes_x_accumulation(tmp_path, layouts):
    data = make_dataset(tmp_path / "d", ODD_SHARDS)
    chunks_per_step = layouts[0][0] * layouts[0][1]
    steps = 2 * (81 // chunks_per_step) + 3  # into the third epoch
    reference = step_chunks(rank_loaders(data, *layouts[0]), layouts[0][1], steps)
    for world_size, grad_accum in layouts[1:]:
        assert step_chunks(rank_loaders(data, world_size, grad_accum), grad_accum, steps) == reference
    # an epoch is a whole number of steps, its chunks all distinct; the next epoch starts a new order
    per_epoch = 81 // chunks_per_step
    epoch0 = [c for step in reference[:per_epoch] for c in step]
    assert len(set(epoch0)) == per_epoch * chunks_per_step
    assert reference[per_epoch:2 * per_epoch] != reference[:per_epoch]


def test_chunk_order_depends_on_neither_processes_nor_accumulation(tmp_path):
    data = make_dataset(tmp_path / "d", ODD_SHARDS)
    orders = [rank_loaders(data, w, a)[0]._starts.tolist() for w, a in [(1, 1), (2, 1), (3, 1), (1, 2), (2, 2)]]
    assert all(order == orders[0] for order in orders) and len(orders[0]) == 81


def test_state_saved_with_some_processes_resumes_with_others(tmp_path):
    data = make_dataset(tmp_path / "d", ODD_SHARDS)
    steps_per_epoch = 81 // 4
    expected = step_chunks(rank_loaders(data, 2, 2), 2, 3 * steps_per_epoch)
    for stop in (3, steps_per_epoch, steps_per_epoch + 2):  # mid-epoch, at an epoch's end, past it
        saved = rank_loaders(data, 2, 2)
        step_chunks(saved, 2, stop)
        state = json.loads(json.dumps(saved[1].state_dict()))  # any rank's state
        for world_size, grad_accum in [(1, 4), (4, 1), (2, 2)]:
            resumed = rank_loaders(data, world_size, grad_accum)
            for loader in resumed:
                loader.load_state_dict(state)
            got = step_chunks(resumed, grad_accum, steps_per_epoch + 2)
            assert got == expected[stop:stop + steps_per_epoch + 2], (stop, world_size, grad_accum)


def test_seeds_shuffle_shards_and_positions_deterministically(tmp_path):
    data = make_dataset(tmp_path / "d", [400, 400, 400, 400])

    def order(seed, epoch_count=1):
        loader = TokenLoader(data, batch_size=2, seq_len=10, seed=seed)
        return [int(x[0, 0]) for _ in range(epoch_count) for x, _ in epoch_batches(loader)]

    assert order(1) == order(1)
    assert order(1) != order(2)
    starts = order(1)
    assert starts != sorted(starts)  # not the file order
    two_epochs = order(1, epoch_count=2)
    assert two_epochs[:len(starts)] != two_epochs[len(starts):]  # a new order each epoch


def test_resume_mid_epoch_mid_shard_and_across_epochs(tmp_path):
    data = make_dataset(tmp_path / "d", [900, 700, 1300])
    for rank in range(2):
        reference = TokenLoader(data, batch_size=2, seq_len=16, rank=rank, world_size=2, seed=3)
        per_epoch = reference.batches_per_epoch
        expected = [reference.next_batch() for _ in range(3 * per_epoch)]
        for stop in (1, per_epoch // 2 + 1, per_epoch, per_epoch + 3):
            first = TokenLoader(data, batch_size=2, seq_len=16, rank=rank, world_size=2, seed=3)
            for _ in range(stop):
                first.next_batch()
            state = json.loads(json.dumps(first.state_dict()))  # JSON-able
            resumed = TokenLoader(data, batch_size=2, seq_len=16, rank=rank, world_size=2, seed=3)
            resumed.load_state_dict(state)
            for x_ref, y_ref in expected[stop:stop + per_epoch + 2]:
                x, y = resumed.next_batch()
                assert (x == x_ref).all() and (y == y_ref).all()


def test_resume_refuses_other_settings(tmp_path):
    data = make_dataset(tmp_path / "d", [900])
    state = TokenLoader(data, batch_size=2, seq_len=16).state_dict()
    with pytest.raises(DataError, match="batch_size"):
        TokenLoader(data, batch_size=4, seq_len=16).load_state_dict(state)
    # another total batch: other epoch boundaries, so not the same stream
    step2 = TokenLoader(data, batch_size=2, seq_len=16, rank=1, world_size=2).state_dict()
    with pytest.raises(DataError, match="chunks_per_step=2"):
        TokenLoader(data, batch_size=2, seq_len=16, rank=1, world_size=2, grad_accum=2).load_state_dict(step2)
    # mid-step (one micro-step of two taken): another number of processes cannot split the rest of the step
    mid_step = TokenLoader(data, batch_size=2, seq_len=16, grad_accum=2)
    mid_step.next_batch()
    with pytest.raises(DataError, match="optimizer-step boundary"):
        TokenLoader(data, batch_size=2, seq_len=16, rank=1, world_size=2).load_state_dict(mid_step.state_dict())


def test_state_of_an_older_version_resumes_at_the_same_point(tmp_path):
    data = make_dataset(tmp_path / "d", [900])
    old = {"epoch": 1, "position": 3, "seed": 1337, "shuffle": 1, "batch_size": 2, "seq_len": 16, "world_size": 2,
           "num_tokens": 900}  # 3 batches on each of 2 ranks
    loader = TokenLoader(data, batch_size=2, seq_len=16, rank=1, world_size=2)
    loader.load_state_dict(old)
    assert (loader.epoch, loader.chunks_done) == (1, 6)


def test_validation_mode_repeats_the_same_batches(tmp_path):
    data = make_dataset(tmp_path / "d", [500, 300], split="val")
    loader = TokenLoader(data, split="val", batch_size=2, seq_len=8, shuffle=False)
    first = [loader.next_batch()[0] for _ in range(5)]
    assert [int(x[0, 0]) for x in first] == [0, 16, 32, 48, 64]  # in order, no shuffling
    loader.next_batch()
    loader.reset()
    again = [loader.next_batch()[0] for _ in range(5)]
    assert all((a == b).all() for a, b in zip(first, again))


def test_memmaps_and_refusals(tmp_path):
    data = make_dataset(tmp_path / "d", [100, 50])
    maps = split_tokens(data, "train")
    assert [len(m) for m in maps] == [100, 50] and all(isinstance(m, np.memmap) for m in maps)
    assert read_manifest(data)["vocab_size"] == 50257
    with pytest.raises(DataError, match="too few"):
        TokenLoader(data, batch_size=10, seq_len=15)  # 151 tokens needed, 150 there
    TokenLoader(data, batch_size=1, seq_len=149)  # exactly enough
    with pytest.raises(DataError, match="too few"):
        TokenLoader(data, batch_size=1, seq_len=100, world_size=2)  # enough for one rank, not two
    with pytest.raises(DataError, match="no split"):
        TokenLoader(data, split="val", batch_size=1, seq_len=4)
    with pytest.raises(DataError, match="does not exist"):
        TokenLoader(tmp_path / "nope", batch_size=1, seq_len=4)
    foreign = make_dataset(tmp_path / "f", [100], tokenizer="llama", vocab_size=32000)
    with pytest.raises(DataError, match="another tokenizer"):
        TokenLoader(foreign, batch_size=1, seq_len=4)
    (data / "train_000001.bin").write_bytes(b"\0" * 10)  # truncated shard
    with pytest.raises(DataError, match="wrong size"):
        split_tokens(data, "train")


def test_a_shard_with_token_ids_beyond_the_vocabulary_is_named_when_first_read(tmp_path):
    data = make_dataset(tmp_path / "d", [400, 400])
    tokens = np.fromfile(data / "train_000001.bin", dtype="<u2")
    tokens[123] = 60000  # fits uint16, not GPT-2's 50257 ids
    tokens.tofile(data / "train_000001.bin")
    loader = TokenLoader(data, batch_size=2, seq_len=10, shuffle=False)
    for _ in range(400 // 20 - 1):
        loader.next_batch()  # the first shard is fine
    with pytest.raises(DataError, match=r"shard .*train_000001\.bin holds token id 60000, but the vocabulary .* 50257"):
        for _ in range(3):
            loader.next_batch()


def test_a_too_small_val_split_is_skipped_only_when_validation_is_not_required(tmp_path):
    from gpt2lab.data.loader import validation_loader

    data = make_dataset(tmp_path / "d", [1000])
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["splits"]["val"] = []  # prepare --val-docs 0
    (data / "manifest.json").write_text(json.dumps(manifest))
    logs = []
    assert validation_loader(data, 2, 10, required=False, log=logs.append) is None
    assert "validation off" in logs[0]
    with pytest.raises(DataError, match=r"too few for one step.*eval.val_every = 0"):
        validation_loader(data, 2, 10, required=True)


def test_the_shard_order_changes_between_epochs(tmp_path):
    """Not only the chunks inside each shard: the order the shards themselves are visited in is drawn per epoch."""
    data = make_dataset(tmp_path / "d", [400, 400, 400, 400])  # token = global position: shard = token // 400
    loader = TokenLoader(data, batch_size=2, seq_len=10, seed=1)
    orders = []
    for _ in range(6):
        visited = [int(x[0, 0]) // 400 for x, _ in epoch_batches(loader)]
        order = [s for i, s in enumerate(visited) if i == 0 or s != visited[i - 1]]
        assert sorted(order) == [0, 1, 2, 3]  # each shard visited in one go per epoch
        orders.append(tuple(order))
    assert len(set(orders)) > 1


# --- align_to_documents ---------------------------------------------------------------------------------------

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
