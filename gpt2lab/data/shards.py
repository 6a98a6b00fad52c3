"""ShardWriter: appends documents (EOT first) to uint16 shard files, each written under a temporary name and
renamed when complete. Shards end on document boundaries, so a finished shard is a self-contained record of
whole documents and an interrupted prepare can resume after the last finished shard of each split."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np

from gpt2lab.storage.atomic import TMP_PREFIX
from gpt2lab.data.errors import DataError
from gpt2lab.data.manifest import EOT_TOKEN, shard_name


class ShardWriter:
    def __init__(self, out_dir: Path, split: str, shard_size: int, shards: list[dict],
                 on_shard_done: Callable[[], None]):
        self.out_dir, self.split, self.shard_size = out_dir, split, shard_size
        self.shards = shards  # finished shards' manifest entries (resumed ones included), appended to here
        self.on_shard_done = on_shard_done
        self.last_document = -1  # stream index of the newest document in a finished shard
        self._file = None

    def add(self, documents: list[tuple[int, np.ndarray]]) -> None:
        """Append (stream index, tokens) documents; a shard is closed before a document that would overflow it
        (a single document longer than the shard size gets a shard of its own)."""
        pending, pending_tokens = [], 0
        for index, tokens in documents:
            size = len(tokens) + 1
            filled = self._tokens + pending_tokens if self._file is not None else 0
            if filled and filled + size > self.shard_size:
                self._write(pending)
                self._finish()
                pending, pending_tokens = [], 0
            if self._file is None:
                self._open()
            pending.append((index, tokens))
            pending_tokens += size
        self._write(pending)

    def close(self) -> None:
        """Finish the shard in progress (the end of the corpus)."""
        if self._file is not None and self._tokens:
            self._finish()
        self.discard()

    def discard(self) -> None:
        """Remove the unfinished shard (after an error: nothing half-written stays behind)."""
        if self._file is not None:
            self._file.close()
            self._file = None
            self._tmp.unlink(missing_ok=True)

    def _open(self) -> None:
        self.name = shard_name(self.split, len(self.shards))
        self._tmp = self.out_dir / f"{TMP_PREFIX}{self.name}"
        self._file = open(self._tmp, "wb")
        self._hash, self._tokens, self._documents, self._last = hashlib.sha256(), 0, 0, -1

    def _write(self, documents: list[tuple[int, np.ndarray]]) -> None:
        if not documents:
            return
        total = sum(len(t) + 1 for _, t in documents)
        out = np.empty(total, dtype="<u2")
        pos = 0
        for _, tokens in documents:
            out[pos] = EOT_TOKEN
            out[pos + 1: pos + 1 + len(tokens)] = tokens
            pos += len(tokens) + 1
        data = out.tobytes()
        try:
            self._file.write(data)
        except OSError as e:
            self.discard()
            if e.errno == errno.ENOSPC:
                raise DataError(f"disk full while writing {self.out_dir / self.name} (its temporary file is "
                                f"removed; finished shards are kept): free space and rerun to resume") from None
            raise
        self._hash.update(data)
        self._tokens += total
        self._documents += len(documents)
        self._last = documents[-1][0]

    def _finish(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as e:
            self.discard()
            raise DataError(f"cannot write {self.out_dir / self.name} ({e.strerror}); temporary file removed: "
                            f"free space and rerun to resume") from None
        self._file.close()
        self._file = None
        os.replace(self._tmp, self.out_dir / self.name)
        self.shards.append({"file": self.name, "tokens": self._tokens, "documents": self._documents,
                            "sha256": self._hash.hexdigest()})
        self.last_document = self._last
        self.on_shard_done()
