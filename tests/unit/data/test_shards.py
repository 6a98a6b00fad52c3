"""ShardWriter (gpt2lab/data/shards.py): each shard's manifest entry describes its bytes exactly, and a shard has its
final name only once it is complete."""

import numpy as np

from gpt2lab import get_tokenizer
from gpt2lab.data import PrepareConfig, prepare
from gpt2lab.data.shards import ShardWriter

from tests.data_utils import TEXTS, quiet, write_txt_corpus


def test_manifest_describes_each_shard_exactly(tmp_path):
    """Per shard: sha256 of the file's bytes, its token count (2 bytes each), its documents (one EOT each)."""
    import hashlib

    corpus = write_txt_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    manifest = prepare(PrepareConfig([str(corpus)], str(out), shard_size=40, val_docs=2, progress=False), log=quiet)
    eot = get_tokenizer().eot_token
    shards = [s for split in ("train", "val") for s in manifest["splits"][split]]
    assert len(shards) > 3
    for shard in shards:
        data = (out / shard["file"]).read_bytes()
        assert shard["sha256"] == hashlib.sha256(data).hexdigest(), shard["file"]
        tokens = np.frombuffer(data, dtype="<u2")
        assert shard["tokens"] == len(tokens) and shard["documents"] == int((tokens == eot).sum()) > 0


def test_a_shard_has_its_final_name_only_once_complete(tmp_path, monkeypatch):
    """Watched after every write: each train_/val_ file in the output is a finished shard (the one being
    written is under a temporary name)."""
    corpus = write_txt_corpus(tmp_path / "c")
    out = tmp_path / "o"
    real_write = ShardWriter._write
    checked = []

    def write_and_look(self, documents):
        real_write(self, documents)
        finished = {s["file"] for s in self.shards}
        named = {p.name for p in out.glob(f"{self.split}_*.bin")}
        assert named <= finished, f"{sorted(named - finished)} is visible before it is complete"
        checked.append(len(documents))

    monkeypatch.setattr(ShardWriter, "_write", write_and_look)
    prepare(PrepareConfig([str(corpus)], str(out), shard_size=30, val_docs=1, progress=False), log=quiet)
    assert sum(checked) == len(TEXTS)
    assert len(list(out.glob("train_*.bin"))) > 2
