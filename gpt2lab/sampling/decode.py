"""Sampling from GPT-2: incremental decoding with a KV cache, and the rules that pick each next token.

Decoding runs the prompt through the model once (prefill), then feeds one new token per step, reusing the keys
and values cached for every earlier position and projecting only the last position onto the vocabulary.
Beyond `block_size` the model sees the most recent `block_size` tokens (a sliding window). Positions are
absolute (learned position embeddings), so when the window slides every cached key is stale: those steps
rebuild the cache from the window. The result is exactly what recomputing the cropped context from scratch
gives, only faster until the context is full.

Next-token rules, applied in this order: temperature (0 = greedy, always the most likely token), top-k (keep the
k most likely), top-p (keep the smallest set of most likely tokens whose probability reaches p). Random draws
come from a private `torch.Generator`: a seed gives the same tokens on the same device every run, and the
global RNG is neither read nor advanced. A list of seeds, one per sequence, gives each sequence its own
generator, so that what a sequence draws does not depend on which others share its batch (`gpt2lab sample`
uses this: sample i is the same whatever --num-samples and --batch-size, up to float rounding, which differs
between batch shapes and can tip a rare near-tie).

The model is used through its interface (config, forward with a cache, hidden_states, lm_head, new_kv_cache);
this module does not import model/gpt.py, which imports it for `GPT.generate`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from gpt2lab.errors import BadValue
from gpt2lab.model import cpu_decode


class SamplingError(BadValue):
    """A sampling setting or a prompt that cannot be used (`param` names it)."""


# --------------------------------------------------------------------------------------------- decoding


class IncrementalDecoder:
    """Next-token logits for a batch of growing sequences, computed with a KV cache.

    `logits` (B, vocab, float32) predicts the token after the sequences so far; `append(tokens)` adds one token
    to each sequence and updates `logits`.
    """

    def __init__(self, model, idx: torch.Tensor, max_new_tokens: int):
        self.model = model
        self.block_size = model.config.block_size
        # The tokens the model sees: the last block_size. Kept so the cache can be rebuilt once it slides.
        self.window = idx[:, -self.block_size :]
        # Only prompt + new tokens positions are ever used: allocate no more (5 samples x 1024 x 12 layers adds up)
        self.cache = model.new_kv_cache(idx.size(0), length=self.window.size(1) + max_new_tokens)
        self.unembedding = unembedding_for_decoding(model)
        self.logits = self._forward(self.window)

    def append(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.view(-1, 1)
        self.window = torch.cat([self.window, tokens], dim=1)
        if self.window.size(1) <= self.block_size:  # room left: one cached step
            self.logits = self._forward(tokens)
        else:  # the window slides: every position shifts, so recompute it from scratch
            self.window = self.window[:, -self.block_size :]
            self.cache.reset()
            self.logits = self._forward(self.window)
        return self.logits

    def _forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.unembedding is None:
            logits, _ = self.model(tokens, cache=self.cache, last_logits_only=True)
            logits = logits[:, -1, :]
        else:
            logits = self.unembedding(self.model.hidden_states(tokens, cache=self.cache)[:, -1, :])
        return logits.float()  # sampling maths in float32 whatever the model's dtype


def unembedding_for_decoding(model):
    """On CPU, the vocabulary projection (hidden (B, n_embd) -> logits (B, vocab)) through a copy of the tied
    embedding laid out for decoding; None elsewhere (GPUs use lm_head as it is).

    The projection is the largest matmul of a decode step (a third of gpt2's weight bytes). Through lm_head, a
    float32 product reads the (vocab, n_embd) embedding row by row, which MKL streams at ~13 GB/s on a 2-core EPYC;
    x @ W with W stored (n_embd, vocab) streams at ~23 GB/s: ~5 ms less per token for gpt2. A bf16 model on a CPU
    that computes bf16 natively uses oneDNN's packed product instead (gpt2lab.model.cpu_decode). Either way the copy
    (154 MB for gpt2 in float32, 77 MB in bf16) lives as long as the generation.
    """
    weight = model.lm_head.weight.detach()
    if weight.device.type != "cpu" or hasattr(weight, "to_local"):  # a GPU, or sharded (FSDP): lm_head as it is
        return None
    if cpu_decode.uses_packed_bf16(weight, weight):
        return cpu_decode.PackedLinear(weight, weight)  # the embedding is (vocab, n_embd): (out, in) as packed
    transposed = weight.t().contiguous()
    return lambda hidden: hidden @ transposed


# --------------------------------------------------------------------------------------------- next token


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> torch.Tensor:
    """Pick one token per row of `logits` (B, vocab) -> (B,); `generator` may be a list, one per row."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    # The largest logit subtracted first: then no temperature above MIN_TEMPERATURE overflows (each scaled logit is
    # <= 0), and a tiny one tends to greedy instead of turning the probabilities into NaN.
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    candidates = None  # vocabulary ids of the columns of `logits`; None: all of them
    if top_k is not None and top_k < logits.size(-1):
        # Keep exactly k survivors (even when several logits tie with the k-th) and draw among those k
        # only: a softmax and a draw over 50 values instead of 50,257.
        logits, candidates = torch.topk(logits, top_k, dim=-1)
    probs = F.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        probs = keep_top_p(probs, top_p)
    if isinstance(generator, list):  # each row draws from its own generator, whatever the other rows are
        choice = torch.cat([torch.multinomial(p[None], 1, generator=g) for p, g in zip(probs, generator)])
    else:
        choice = torch.multinomial(probs, num_samples=1, generator=generator)
    return (choice if candidates is None else candidates.gather(-1, choice)).squeeze(-1)


def keep_top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero every token outside the smallest most-likely set whose probability mass reaches `top_p`."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    # A token is needed while the more likely ones have not reached top_p yet (the most likely always is).
    drop_sorted = mass_before >= top_p
    # Said, not left to arithmetic: a top_p below float32's range (1e-300) is 0 next to the probabilities, and
    # 0 >= 0 would drop every token (multinomial then refuses an all-zero row).
    drop_sorted[..., 0] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back from sorted order to vocabulary order
    return probs.masked_fill(drop, 0.0)  # multinomial does not need the rest renormalised


# --------------------------------------------------------------------------------------------- public API


def generate_stream(
    model,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | list[int] | None = None,
    stop_token: int | None = None,
    vocab_size: int | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of each sequence, (B,) on idx's device, as soon as it is chosen.

    idx (B, T): prompt token ids (T >= 1; for unconditional sampling start from <|endoftext|>, 50256).
    seed: seeds this call's own generator (None: a fresh random one). The global RNG is untouched. A list of B
        seeds gives each sequence its own generator: sequence b then draws the same tokens in any batch.
    stop_token: a sequence that produced it is finished; later steps yield stop_token for it again (padding),
        and the stream ends once every sequence is finished.
    vocab_size: sample only ids below it (default: all of the model's). A model trained with its vocabulary
        padded to 50304 has 47 ids that no tokenizer knows; pass the tokenizer's n_vocab to exclude them.
    """
    vocab_size = check_generate_args(model, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                     seed=seed, stop_token=stop_token, vocab_size=vocab_size)
    idx = idx.long()
    if isinstance(seed, list):
        generator = [seeded_generator(s, idx.device) for s in seed]
    else:
        generator = seeded_generator(seed, idx.device)
    finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)

    with torch.no_grad():
        decoder = IncrementalDecoder(model, idx, max_new_tokens)
    for step in range(max_new_tokens):
        with torch.no_grad():
            logits = decoder.logits
            if vocab_size < logits.size(-1):
                logits[:, vocab_size:] = float("-inf")
            tokens = sample_next(logits, temperature, top_k, top_p, generator)
            if stop_token is not None:
                tokens = tokens.masked_fill(finished, stop_token)
                finished |= tokens == stop_token
        yield tokens
        last = step == max_new_tokens - 1
        if last or (stop_token is not None and bool(finished.all())):
            return
        with torch.no_grad():  # not across the yield: the caller's code must run with its own grad mode
            decoder.append(tokens)


def seeded_generator(seed: int | None, device) -> torch.Generator:
    """A private generator on `device`, seeded with `seed` (None: fresh entropy), apart from the global RNG."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()  # fresh entropy from the OS, not from the global RNG
    else:
        generator.manual_seed(seed)
    return generator


def generate(model, idx: torch.Tensor, max_new_tokens: int, **options) -> torch.Tensor:
    """idx (B, T) -> (B, T + n): the prompts followed by n <= max_new_tokens new tokens (fewer only when every
    sequence produced stop_token; a sequence that stopped earlier is padded with stop_token).
    options: the sampling settings of `generate_stream` (temperature, top_k, top_p, seed, stop_token, vocab_size),
    by keyword: they are listed once, there."""
    steps = list(generate_stream(model, idx, max_new_tokens, **options))
    return torch.cat([idx, torch.stack(steps, dim=1)], dim=1)


def sample_seed(seed: int, i: int) -> int:
    """The seed of sample i (from 0) of a run seeded with `seed`, for `gpt2lab sample`.

    Sample 0 uses the seed itself, so a single sample is what it always was. The others use a hash of (seed, i),
    not seed + i: with seed + i, runs with seeds 42 and 43 would share all but one of their samples.
    """
    if i == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}/{i}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def check_generate_args(model, idx, max_new_tokens, *, temperature, top_k, top_p, seed, stop_token, vocab_size) -> int:
    """Refuse unusable settings with a message naming the fix; returns the effective vocab_size."""
    check_sampling_settings(max_new_tokens, temperature, top_k, top_p, seed)
    model_vocab = model.config.vocab_size
    vocab_size = model_vocab if vocab_size is None else vocab_size
    if not _is_int(vocab_size) or not 0 < vocab_size <= model_vocab:
        raise SamplingError("vocab_size", f"must be in 1..{model_vocab} (the model's vocabulary), got {vocab_size!r}")
    if stop_token is not None and (not _is_int(stop_token) or not 0 <= stop_token < vocab_size):
        raise SamplingError("stop_token", f"must be a token id in 0..{vocab_size - 1}, got {stop_token!r}")
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype not in (torch.long, torch.int):
        raise SamplingError("idx", "must be an integer tensor of shape (batch, tokens); wrap one prompt as idx[None]")
    if idx.size(0) == 0 or idx.size(1) == 0:
        raise SamplingError("idx", f"has shape {tuple(idx.shape)}: give at least one token per sequence (for "
                                   f"unconditional sampling start from <|endoftext|>, id 50256)")
    if isinstance(seed, list) and len(seed) != idx.size(0):
        raise SamplingError("seed", f"is a list of {len(seed)} seeds for {idx.size(0)} sequences; give one per sequence")
    low, high = int(idx.min()), int(idx.max())
    if low < 0 or high >= model_vocab:
        raise SamplingError("idx", f"holds token id {low if low < 0 else high}, outside the model's 0..{model_vocab - 1}")
    return vocab_size


# The smallest positive temperature: float32's smallest normal number. Below it the scaled logits are not
# representable (1e-300 is 0 in float32); any temperature above it works (see sample_next).
MIN_TEMPERATURE = float(torch.finfo(torch.float32).tiny)
# The largest: float32's largest number. Above it the temperature is infinity in float32, and an excluded id's
# logit (-inf, a padded vocabulary's) over it is NaN. (Anything far above 100 samples uniformly anyway.)
MAX_TEMPERATURE = float(torch.finfo(torch.float32).max)


def check_sampling_settings(max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None) -> None:
    """The checks that need no model (the CLI and the server run them before spending anything on a request)."""
    if not _is_int(max_new_tokens) or max_new_tokens <= 0:
        raise SamplingError("max_new_tokens", f"must be a positive integer, got {max_new_tokens!r}")
    if not _is_number(temperature) or not math.isfinite(temperature) or temperature < 0:
        raise SamplingError("temperature", f"must be a number >= 0 (0 = greedy), got {temperature!r}")
    if 0 < temperature < MIN_TEMPERATURE:
        raise SamplingError("temperature", f"must be 0 (greedy) or at least {MIN_TEMPERATURE:.3g}, got {temperature!r}")
    if temperature > MAX_TEMPERATURE:
        raise SamplingError("temperature", f"must be at most {MAX_TEMPERATURE:.3g} (float32's largest number), "
                                           f"got {temperature!r}")
    if top_k is not None and (not _is_int(top_k) or top_k <= 0):
        raise SamplingError("top_k", f"must be a positive integer (or None for no top-k), got {top_k!r}")
    if top_p is not None and (not _is_number(top_p) or not 0 < top_p <= 1):
        raise SamplingError("top_p", f"must be in (0, 1] (1 = off), got {top_p!r}")
    if isinstance(seed, list):
        if not all(_is_int(s) and 0 <= s < 2**64 for s in seed):
            raise SamplingError("seed", f"must hold integers in 0..2**64-1, one per sequence, got {seed!r}")
    elif seed is not None and (not _is_int(seed) or not 0 <= seed < 2**64):
        raise SamplingError("seed", f"must be an integer in 0..2**64-1 or None, got {seed!r}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
