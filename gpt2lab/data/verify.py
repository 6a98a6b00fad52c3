"""Shards checked against the sha256 their manifest recorded, when a run starts and when it resumes.

A bit flipped on disk (a bad sector, a careless copy) gives no error when a shard is memory-mapped and read: the
model just trains on other tokens. `gpt2lab prepare` records each shard's sha256 in manifest.json; the trainer
hashes every shard of the dataset (both splits) once per invocation, before the first step: no loader reads a
shard before that, and nothing hashes it again. The processes of a run share the
work (each hashes every world_size-th shard) and then all learn which shards failed, so every rank refuses the
same run. Hashing runs at disk speed (a few hundred MB/s from the page cache; see docs/data.md): `data.verify =
false` (or `gpt2lab train --no-verify`) skips it, for a dataset too big to read at every start.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from gpt2lab.data.errors import DataError
from gpt2lab.runtime import distributed

_CHUNK = 8 << 20  # bytes hashed per read: large enough for disk speed, small enough to stay out of the way


def verify_shards(data_dir, manifest: dict, log=print) -> None:
    """Refuse the dataset when a shard's sha256 is not the manifest's, naming the shard(s); every rank of a run
    calls it and hashes its share of them."""
    data_dir = Path(data_dir)
    shards = [(data_dir / s["file"], s.get("sha256")) for split in manifest["splits"].values() for s in split]
    rank, world_size = distributed.rank_and_world()
    started, hashed, damaged = time.perf_counter(), 0, []
    for path, expected in shards[rank::world_size]:
        if not path.is_file():
            damaged.append(f"{path} (missing)")
            continue
        if expected is None:  # not recorded (a hand-made manifest): nothing to compare with
            continue
        digest, size = file_sha256(path)
        hashed += size
        if digest != expected:
            damaged.append(str(path))
    damaged = sorted(set().union(*distributed.all_gather_object(damaged)))
    if damaged:
        more = f" and {len(damaged) - 3} more" if len(damaged) > 3 else ""
        raise DataError(f"shard {', '.join(damaged[:3])}{more} does not match its sha256 in {data_dir}/manifest.json: "
                        f"the file changed since `gpt2lab prepare` wrote it; rebuild with `gpt2lab prepare ... "
                        f"--overwrite` (data.verify = false skips this check)")
    if hashed:
        seconds = time.perf_counter() - started
        log(f"data: verified {hashed / 1e6:,.1f} MB of shards against manifest.json in {seconds:.1f} s "
            f"(data.verify = false skips it)")


def file_sha256(path: Path) -> tuple[str, int]:
    """(hex sha256, bytes) of a file, read in large chunks."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size
