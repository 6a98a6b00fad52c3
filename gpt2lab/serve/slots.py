"""The KV cache of a server: one row per sequence being generated, each row with its own length.

`gpt2lab.model.gpt.KVCache` holds a batch whose rows all have the same length, which is what sampling one prompt
several times needs. A server decodes, in one forward pass, requests that arrived at different times with
prompts of different lengths, so here every row has its own length and the model sees it through the same three
methods (`positions`, `attend`, `advance`), given by one of two views:

- `prefill(first, lengths)`: prompts (right-padded to the longest) enter rows first, first + 1, ...; every row
  starts at position 0, so plain causal attention is right for each real token (the padding after it is
  never attended: the row's next token overwrites the padding's keys, and decode masks what lies beyond);
- `decode(count)`: one new token in each of rows 0 .. count-1, each at its own position (its row's length),
  attending to its own row's first length + 1 keys only.

The rows in use are always 0 .. count-1 (`move` fills a freed row with the last one), so a decode step works on
a plain slice of the cache, never a gathered copy of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gpt2lab.model.config import ContextLengthError
from gpt2lab.model.gpt import causal_attention


class SlotCache:
    def __init__(self, model, rows: int):
        config, weight = model.config, model.transformer.wte.weight
        self.config, self.rows, self.block_size = config, rows, config.block_size
        shape = (config.n_layer, rows, config.n_head, config.block_size, config.head_dim)
        # Allocated once for the whole context of every row: a server's memory does not grow with its traffic.
        # Zeros, not empty: a decode step reads every row up to the longest row's length, masking what lies
        # beyond a shorter row's own; a masked score weighs 0, but 0 x NaN (garbage in recycled memory) is NaN.
        self.keys = torch.zeros(shape, device=weight.device, dtype=weight.dtype)
        self.values = torch.zeros(shape, device=weight.device, dtype=weight.dtype)
        self.lengths = [0] * rows  # positions filled in each row (a Python list: no device sync to read it)

    def prefill(self, first: int, lengths: list[int]) -> _Prefill:
        return _Prefill(self, first, lengths)

    def decode(self, count: int) -> _Decode:
        return _Decode(self, count)

    def move(self, source: int, target: int) -> None:
        """Copy row `source` (its filled positions) into row `target`."""
        n = self.lengths[source]
        self.keys[:, target, :, :n] = self.keys[:, source, :, :n]
        self.values[:, target, :, :n] = self.values[:, source, :, :n]
        self.lengths[target] = n


class _Prefill:
    """Right-padded prompts entering rows first .. first + B - 1, all starting at position 0."""

    def __init__(self, cache: SlotCache, first: int, lengths: list[int]):
        self.cache, self.first, self.lengths = cache, first, lengths

    def positions(self, T: int, device) -> torch.Tensor:
        self.cache.config.check_context(T, "prompt")
        return torch.arange(T, dtype=torch.long, device=device)

    def attend(self, layer: int, q, k, v):
        rows = slice(self.first, self.first + q.size(0))
        self.cache.keys[layer, rows, :, : k.size(2)] = k
        self.cache.values[layer, rows, :, : v.size(2)] = v
        return causal_attention(q, k, v)  # the model's own choice of kernel: the same numbers as gpt2lab sample

    def advance(self, T: int) -> None:
        self.cache.lengths[self.first : self.first + len(self.lengths)] = self.lengths  # the real tokens only


class _Decode:
    """One new token in each of rows 0 .. count-1, each at its row's own position."""

    def __init__(self, cache: SlotCache, count: int):
        self.cache, self.count = cache, count
        lengths = cache.lengths[:count]
        if max(lengths) >= cache.block_size:
            raise ContextLengthError("sequence", f"fills its row of the cache ({cache.block_size} positions)")
        device = cache.keys.device
        self.pos = torch.tensor(lengths, dtype=torch.long, device=device)
        self.span = max(lengths) + 1  # keys any row attends to: the longest row's, plus the new token
        # Rows of equal length (always so for a lone request) need no mask: the exact computation of
        # gpt2lab.sampling.decode. Otherwise row b sees its own first lengths[b] + 1 keys only.
        self.mask = None
        if min(lengths) != max(lengths):
            self.mask = (torch.arange(self.span, device=device) <= self.pos[:, None])[:, None, None, :]
        self.rows = torch.arange(count, device=device)

    def positions(self, T: int, device) -> torch.Tensor:
        assert T == 1, "decode feeds one token per row"
        return self.pos[:, None]  # (B, 1)

    def attend(self, layer: int, q, k, v):
        keys, values = self.cache.keys[layer, : self.count], self.cache.values[layer, : self.count]
        keys[self.rows, :, self.pos] = k[:, :, 0]
        values[self.rows, :, self.pos] = v[:, :, 0]
        keys, values = keys[:, :, : self.span], values[:, :, : self.span]
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=self.mask)

    def advance(self, T: int) -> None:
        for row in range(self.count):
            self.cache.lengths[row] += T
