"""TokenLoader: (x, y) batches from token shards, shuffled per epoch, disjoint across ranks, exactly resumable.

An epoch lays the split's shards end to end (in a seeded order) and cuts that stream into chunks of B*T tokens;
chunk k yields x = tokens[kBT : kBT+BT] and y = tokens[kBT+1 : kBT+BT+1], so every token is a target once per
epoch. Chunks are visited one shard at a time (seeded order of chunks within each shard: random enough to avoid
the periodic loss of a fixed order, local enough for the page cache). Chunk j of the epoch belongs to rank
j % world_size; each rank gets the same number, so ranks stay in lockstep under DDP. The position is two ints
(epoch, batches taken this epoch), identical on all ranks: any rank's state_dict() resumes every rank.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gpt2lab.data.errors import DataError
from gpt2lab.data.manifest import read_manifest, split_tokens


class TokenLoader:
    def __init__(self, data_dir, split: str = "train", batch_size: int = 8, seq_len: int = 1024, rank: int = 0,
                 world_size: int = 1, seed: int = 1337, shuffle: bool = True):
        if batch_size < 1 or seq_len < 1:
            raise DataError(f"batch_size and seq_len must be positive (got {batch_size}, {seq_len})")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world_size {world_size}")
        self.data_dir, self.split = Path(data_dir), split
        self.batch_size, self.seq_len = batch_size, seq_len
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.vocab_size: int = read_manifest(data_dir)["vocab_size"]
        self.shards = split_tokens(data_dir, split)  # memory-mapped once, never reopened per batch
        self.num_tokens = int(sum(len(s) for s in self.shards))
        chunk = batch_size * seq_len
        num_chunks = max(self.num_tokens - 1, 0) // chunk  # the +1 is the last chunk's final target
        self.batches_per_epoch = num_chunks // world_size
        if self.batches_per_epoch == 0:
            raise DataError(
                f"split {split!r} of {self.data_dir} has {self.num_tokens:,} tokens, too few for one batch of "
                f"batch_size*seq_len+1 = {chunk + 1:,} tokens on each of {world_size} rank(s); lower the batch "
                f"size or sequence length, or prepare more data")
        self.reset()

    def reset(self, epoch: int = 0) -> None:
        """Back to the first batch of `epoch` (for validation: the same fixed batches every time)."""
        self.epoch, self.position = epoch, 0
        self._starts = self._epoch_chunk_starts(epoch)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position >= self.batches_per_epoch:
            self.reset(self.epoch + 1)
        start = self._starts[self.position * self.world_size + self.rank]
        self.position += 1
        span = self._read(int(start), self.batch_size * self.seq_len + 1).astype(np.int64)
        x = torch.from_numpy(span[:-1]).view(self.batch_size, self.seq_len)
        y = torch.from_numpy(span[1:]).view(self.batch_size, self.seq_len)
        return x, y

    def state_dict(self) -> dict:
        """Plain ints only (JSON, TOML or a weights_only checkpoint all hold it)."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "shuffle": int(self.shuffle),
                "batch_size": self.batch_size, "seq_len": self.seq_len, "world_size": self.world_size,
                "num_tokens": self.num_tokens}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where `state` was taken (any rank's state: all ranks share the position)."""
        for key in ("seed", "shuffle", "batch_size", "seq_len", "world_size", "num_tokens"):
            if key in state and state[key] != int(getattr(self, key)):
                raise DataError(f"loader state was saved with {key}={state[key]!r} but this loader has "
                                f"{getattr(self, key)!r}; resume with the same data and batch settings")
        self.reset(int(state["epoch"]))
        self.position = int(state["position"])

    # --- internals -------------------------------------------------------------------------------------------

    def _epoch_order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.shards)))
        return [int(i) for i in np.random.default_rng([self.seed, epoch, 0]).permutation(len(self.shards))]

    def _epoch_chunk_starts(self, epoch: int) -> np.ndarray:
        """Start offsets (in the epoch's concatenated stream) of the chunks this epoch uses, in visiting order."""
        order = self._epoch_order(epoch)
        self._layout = []  # (stream offset, shard) in this epoch's order
        offset = 0
        for i in order:
            self._layout.append((offset, self.shards[i]))
            offset += len(self.shards[i])
        self._offsets = np.array([o for o, _ in self._layout], dtype=np.int64)
        chunk = self.batch_size * self.seq_len
        starts = np.arange(self.batches_per_epoch * self.world_size, dtype=np.int64) * chunk
        if self.shuffle:
            # Shuffle chunks within each shard (a chunk belongs to the shard it starts in); shards keep their order.
            rng = np.random.default_rng([self.seed, epoch, 1])
            owner = np.searchsorted(self._offsets, starts, side="right") - 1
            groups = np.split(starts, np.flatnonzero(np.diff(owner)) + 1)
            starts = np.concatenate([rng.permutation(g) for g in groups])
        return starts

    def _read(self, start: int, length: int) -> np.ndarray:
        """`length` tokens from the epoch stream at `start`, across shard boundaries if need be."""
        pieces = []
        i = int(np.searchsorted(self._offsets, start, side="right")) - 1
        while length > 0:
            offset, shard = self._layout[i]
            piece = shard[start - offset: start - offset + length]
            pieces.append(piece)
            start, length, i = start + len(piece), length - len(piece), i + 1
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
