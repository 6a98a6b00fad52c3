"""Token data: `prepare` turns a corpus into GPT-2 token shards; `TokenLoader` serves (x, y) batches from them.

    from gpt2lab.data import TokenLoader
    loader = TokenLoader("data/shakespeare", "train", batch_size=8, seq_len=256, rank=0, world_size=1)
    x, y = loader.next_batch()
"""

from gpt2lab.data.errors import DataError
from gpt2lab.data.loader import TokenLoader
from gpt2lab.data.manifest import read_manifest, split_tokens
from gpt2lab.data.prepare import PrepareConfig, prepare

__all__ = ["DataError", "PrepareConfig", "TokenLoader", "prepare", "read_manifest", "split_tokens"]
