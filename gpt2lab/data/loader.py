"""TokenLoader: (x, y) batches from token shards, shuffled per epoch, disjoint across ranks, exactly resumable.

An epoch lays the split's shards end to end (in a seeded order) and cuts that stream into chunks of B*T tokens;
chunk k yields x = tokens[kBT : kBT+BT] and y = tokens[kBT+1 : kBT+BT+1], so every token is a target once per
epoch. Chunks are visited one shard at a time (seeded order of chunks within each shard: random enough to avoid
the periodic loss of a fixed order, local enough for the page cache). That sequence of chunks depends only on the
data, the seed, B and T - never on the number of processes.

An optimizer step takes the next world_size * grad_accum chunks of the sequence: on micro-step m, rank r reads
chunk (chunks done) + m*world_size + r. So every (processes x accumulation) with the same product trains on the
same chunks in the same steps; only which process computes which chunk differs. An epoch is a whole number of
steps (the tail of the sequence that would not fill a step is skipped), so epoch boundaries do not depend on the
number of processes either. The position is two ints shared by all ranks (epoch, chunks done this epoch by all
ranks together): any rank's state_dict() resumes every rank, with any number of processes for the same step size.

align_to_documents=True (the speed-run's document-aligned batches): a chunk is B rows of T+1 tokens that need not be
contiguous, and each row begins with a document's <|endoftext|> wherever that costs less than a row of data. A
shard's rows are found once (`document_rows`); a row still runs across later documents when its own is short, and
a document longer than a row continues in the next rows. Everything above holds unchanged: the rows, and so the
chunks, depend only on the data, T and B.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gpt2lab.data.errors import DataError
from gpt2lab.data.manifest import check_token_ids, read_manifest, split_tokens


class TooFewTokens(DataError):
    """A split too small for one step (an empty validation split, for instance)."""


class TokenLoader:
    def __init__(self, data_dir, split: str = "train", batch_size: int = 8, seq_len: int = 1024, rank: int = 0,
                 world_size: int = 1, seed: int = 1337, shuffle: bool = True, grad_accum: int = 1,
                 align_to_documents: bool = False):
        if batch_size < 1 or seq_len < 1 or grad_accum < 1:
            raise DataError(f"batch_size, seq_len and grad_accum must be positive "
                            f"(got {batch_size}, {seq_len}, {grad_accum})")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world_size {world_size}")
        self.data_dir, self.split = Path(data_dir), split
        self.batch_size, self.seq_len = batch_size, seq_len
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle, self.align_to_documents = seed, shuffle, align_to_documents
        self.chunks_per_step = world_size * grad_accum  # the one number (with B, T) that fixes the epoch's length
        self.vocab_size: int = read_manifest(data_dir)["vocab_size"]
        self.shards = split_tokens(data_dir, split)  # memory-mapped once, never reopened per batch
        self._ids_checked = [False] * len(self.shards)  # each shard's token ids, checked when it is first read
        self.num_tokens = int(sum(len(s) for s in self.shards))
        chunk = batch_size * seq_len
        if align_to_documents:
            eot = read_manifest(data_dir)["eot_token"]
            self._shard_rows = [document_rows(self._checked(i), eot, seq_len) for i in range(len(self.shards))]
            rows = sum(len(r) for r in self._shard_rows)
            self.num_chunks = rows // batch_size
            self.tokens_kept = rows * seq_len / max(self.num_tokens, 1)  # the rest: document tails rows skip
        else:
            self.num_chunks = max(self.num_tokens - 1, 0) // chunk  # the +1 is the last chunk's final target
            self.tokens_kept = self.num_chunks * chunk / max(self.num_tokens, 1)
        self.steps_per_epoch = self.num_chunks // self.chunks_per_step
        self.chunks_per_epoch = self.steps_per_epoch * self.chunks_per_step
        self.batches_per_epoch = self.steps_per_epoch * grad_accum  # next_batch() calls per rank and epoch
        if self.steps_per_epoch == 0:
            aligned = f" ({self.tokens_kept:.0%} of them in document-aligned rows)" if align_to_documents else ""
            raise TooFewTokens(
                f"split {split!r} of {self.data_dir} has {self.num_tokens:,} tokens{aligned}, too few for one step of "
                f"{self.chunks_per_step} batch(es) of batch_size*seq_len = {chunk:,} tokens ({world_size} rank(s) "
                f"x {grad_accum} micro-step(s)) plus one; lower the batch size or sequence length, or prepare "
                f"more data")
        self.reset()

    def reset(self, epoch: int = 0) -> None:
        """Back to the first batch of `epoch` (for validation: the same fixed batches every time)."""
        self.epoch, self.chunks_done = epoch, 0
        self._starts = self._epoch_chunk_starts(epoch)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.chunks_done >= self.chunks_per_epoch:
            self.reset(self.epoch + 1)
        start = self._starts[self.chunks_done + self.rank]
        self.chunks_done += self.world_size  # this micro-step took world_size chunks, one per rank
        if self.align_to_documents:  # `start` is the chunk's B row starts
            rows = np.stack([self._read(int(s), self.seq_len + 1) for s in start]).astype(np.int64)
            return torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(rows[:, 1:].copy())
        span = self._read(int(start), self.batch_size * self.seq_len + 1).astype(np.int64)
        x = torch.from_numpy(span[:-1]).view(self.batch_size, self.seq_len)
        y = torch.from_numpy(span[1:]).view(self.batch_size, self.seq_len)
        return x, y

    def state_dict(self) -> dict:
        """Plain ints only (JSON, TOML or a weights_only checkpoint all hold it); the same on every rank."""
        return {"epoch": self.epoch, "chunks_done": self.chunks_done, "seed": self.seed,
                "shuffle": int(self.shuffle), "align_to_documents": int(self.align_to_documents),
                "batch_size": self.batch_size, "seq_len": self.seq_len,
                "chunks_per_step": self.chunks_per_step, "num_tokens": self.num_tokens}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where `state` was taken: any rank's state, saved with any number of processes.

        The chunk sequence and the epoch length must be the same, so B, T, the seed, shuffling, the data and the
        chunks per step (processes x accumulation) must match. A different B for the same total batch would cut
        the data into other chunks: that is refused too.
        """
        if "chunks_done" not in state:
            # Saved by an older gpt2lab, whose position counted batches per rank: resume at the same point of the
            # epoch. Its epochs ended at a multiple of world_size chunks, not of a step, so near an epoch's end
            # the stream can differ slightly from what it would have read.
            state = {**state, "chunks_done": state["position"] * state["world_size"]}
        state = {"align_to_documents": 0, **state}  # saved before the option existed: unaligned
        for key in ("seed", "shuffle", "align_to_documents", "batch_size", "seq_len", "chunks_per_step",
                    "num_tokens"):
            if key in state and state[key] != int(getattr(self, key)):
                raise DataError(f"loader state was saved with {key}={state[key]!r} but this loader has "
                                f"{getattr(self, key)!r}; resume with the same data and batch settings (the "
                                f"number of processes may change if processes x accumulation stays the same)")
        chunks_done = int(state["chunks_done"])
        if chunks_done % self.world_size:  # can only happen mid-step: a step boundary is a multiple of it
            raise DataError(f"loader state was saved after {chunks_done} chunks of its epoch, not a multiple of "
                            f"world_size {self.world_size}; resume it at an optimizer-step boundary")
        self.reset(int(state["epoch"]))
        self.chunks_done = chunks_done

    # --- internals -------------------------------------------------------------------------------------------

    def _epoch_order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.shards)))
        return [int(i) for i in np.random.default_rng([self.seed, epoch, 0]).permutation(len(self.shards))]

    def _epoch_chunk_starts(self, epoch: int) -> np.ndarray:
        """Start offsets (in the epoch's concatenated stream) of all its chunks, in visiting order."""
        order = self._epoch_order(epoch)
        self._layout = []  # (stream offset, shard index) in this epoch's order
        offset = 0
        for i in order:
            self._layout.append((offset, i))
            offset += len(self.shards[i])
        self._offsets = np.array([o for o, _ in self._layout], dtype=np.int64)
        # Every chunk of the data, not just the ones this epoch uses: the order must not depend on the step size.
        if self.align_to_documents:  # chunk k: rows kB ... kB+B-1 of the epoch's stream
            rows = np.concatenate([offset + self._shard_rows[i] for offset, i in self._layout])
            starts = rows[:self.num_chunks * self.batch_size].reshape(self.num_chunks, self.batch_size)
            first = starts[:, 0]
        else:
            starts = first = np.arange(self.num_chunks, dtype=np.int64) * (self.batch_size * self.seq_len)
        if self.shuffle:
            # Shuffle chunks within each shard (a chunk belongs to the shard it starts in); shards keep their order.
            rng = np.random.default_rng([self.seed, epoch, 1])
            owner = np.searchsorted(self._offsets, first, side="right") - 1
            groups = np.split(np.arange(self.num_chunks), np.flatnonzero(np.diff(owner)) + 1)
            starts = starts[np.concatenate([rng.permutation(g) for g in groups])]
        return starts

    def _read(self, start: int, length: int) -> np.ndarray:
        """`length` tokens from the epoch stream at `start`, across shard boundaries if need be."""
        pieces = []
        i = int(np.searchsorted(self._offsets, start, side="right")) - 1
        while length > 0:
            offset, index = self._layout[i]
            shard = self._checked(index)
            piece = shard[start - offset: start - offset + length]
            pieces.append(piece)
            start, length, i = start + len(piece), length - len(piece), i + 1
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def _checked(self, index: int) -> np.ndarray:
        """Shard `index`, its token ids checked against the vocabulary the first time it is read."""
        shard = self.shards[index]
        if not self._ids_checked[index]:
            check_token_ids(shard, self.vocab_size)
            self._ids_checked[index] = True
        return shard


def document_rows(tokens: np.ndarray, eot: int, seq_len: int) -> np.ndarray:
    """Start offsets of one shard's document-aligned rows of seq_len + 1 tokens (x and its shifted targets).

    A row begins at a document's <|endoftext|> (so its first target is the document's first token) and runs
    seq_len tokens, across later documents if its own is shorter. The next row begins at the next document start
    when that is less than a row away, skipping the rest of the document the row ended in; otherwise (a long
    document) right where this row ended, so no more than seq_len - 1 tokens are skipped at a time and a book-length
    document is not lost. Shards end on document boundaries, so a shard's first token begins one.
    """
    documents = np.flatnonzero(np.asarray(tokens) == eot)
    if not len(documents) or documents[0] != 0:
        documents = np.concatenate([[0], documents])
    documents = np.append(documents, len(tokens))  # the shard's end: the next shard's first document
    rows, start, last = [], 0, len(tokens) - seq_len - 1  # `last`: the final start with a whole row
    while start <= last:
        rows.append(start)
        end = start + seq_len
        following = int(documents[np.searchsorted(documents, end)])
        start = following if following - end < seq_len else end
    return np.array(rows, dtype=np.int64)


def validation_loader(data_dir, batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1, seed: int = 1337,
                      required: bool = True, log=print) -> TokenLoader | None:
    """The fixed (unshuffled) validation batches; None when the val split is too small for one batch and the
    run does not `require` validation during training (eval.val_every = 0): such a run trains without any, where
    only its end-of-run validation loss is lost. Never document-aligned: every run is measured on the same
    contiguous held-out text, as `gpt2lab eval --task loss` measures it."""
    try:
        return TokenLoader(data_dir, "val", batch_size, seq_len, rank, world_size, seed, shuffle=False)
    except TooFewTokens as e:
        if required:
            raise TooFewTokens(f"{e}; or train without validation (eval.val_every = 0)") from None
        log(f"validation off: the val split of {data_dir} is too small for one batch")
        return None
