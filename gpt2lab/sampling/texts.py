"""The one path from (model, prompt, settings, seed) to numbered samples, used by `gpt2lab sample`, the trainer's
samples and `gpt2lab serve`'s model loading.

- `sampling_model_source`: what a MODEL to sample from is (resolved, its config.json read and checked against the
  tokenizer), before any weights load, so a typo costs nothing;
- `prompt_tokens`: a prompt as the model sees it (`<|endoftext|>` for an empty one, cropped to the context);
- `sample_tokens`: samples 0, 1, 2, ... generated `batch_size` at a time, each from its own seed, so sample i is
  the same whatever the count and the batch size (up to float rounding, which differs between batch shapes and can
  tip a rare near-tie);
- `stream_sample` + `write_text`: one sample, its text written as it is generated, whole characters only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from gpt2lab.errors import GPT2LabError
from gpt2lab.hf.format import read_config
from gpt2lab.hf.resolve import resolve_model_dir
from gpt2lab.model.config import GPTConfig
from gpt2lab.sampling.decode import check_sampling_settings, generate, generate_stream, sample_seed
from gpt2lab.sampling.stream import TextStream


@dataclass(frozen=True)
class SampleSettings:
    """How every sample of a call is drawn (the rules of `gpt2lab.sampling.decode.sample_next`)."""

    max_new_tokens: int = 30
    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float | None = None
    stop_at_end_of_text: bool = True  # a sample ends at <|endoftext|>; the trainer's samples run past it

    def __post_init__(self):
        check_sampling_settings(self.max_new_tokens, self.temperature, self.top_k, self.top_p)


def sampling_model_source(source, tokenizer) -> tuple[Path, GPTConfig]:
    """(directory, config) of a MODEL to sample from, refused when its vocabulary lacks the tokenizer's tokens."""
    directory = resolve_model_dir(source)
    config = read_config(directory)  # config.json alone: what the checks need, before the weights
    if config.vocab_size < tokenizer.n_vocab:
        raise GPT2LabError(f"{source} has a vocabulary of {config.vocab_size} tokens, fewer than GPT-2's "
                           f"{tokenizer.n_vocab}; sampling needs a model trained on the GPT-2 tokenizer")
    return directory, config


def prompt_tokens(tokenizer, prompt: str, block_size: int, warn: Callable[[str], None] | None = None) -> list[int]:
    """The prompt's tokens; an empty prompt samples unconditionally (from <|endoftext|>), a prompt longer than the
    context keeps its last block_size tokens (said through `warn`)."""
    tokens = tokenizer.encode(prompt) or [tokenizer.eot_token]
    if len(tokens) > block_size:
        if warn is not None:
            warn(f"the prompt is {len(tokens)} tokens, longer than the model's context of {block_size}; using its "
                 f"last {block_size} tokens")
        tokens = tokens[-block_size:]
    return tokens


def _decode_options(model, tokenizer, settings: SampleSettings) -> dict:
    return dict(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature, top_k=settings.top_k,
                top_p=settings.top_p, vocab_size=min(tokenizer.n_vocab, model.config.vocab_size),
                stop_token=tokenizer.eot_token if settings.stop_at_end_of_text else None)


@torch.no_grad()
def sample_tokens(model, tokenizer, prompt: list[int], settings: SampleSettings, *, seed: int, count: int,
                  batch_size: int) -> Iterator[tuple[int, list[int]]]:
    """(i, new tokens of sample i) for i = 0 .. count - 1, each batch yielded as soon as it is done. Sample i draws
    from its own seed (`sample_seed(seed, i)`); with stop_at_end_of_text its tokens end before <|endoftext|>."""
    device = model.transformer.wte.weight.device
    options = _decode_options(model, tokenizer, settings)
    for first in range(0, count, batch_size):
        numbers = range(first, min(first + batch_size, count))
        idx = torch.tensor([prompt] * len(numbers), dtype=torch.long, device=device)
        rows = generate(model, idx, seed=[sample_seed(seed, i) for i in numbers], **options)[:, len(prompt):]
        for i, row in zip(numbers, rows.tolist()):
            if settings.stop_at_end_of_text and tokenizer.eot_token in row:
                row = row[: row.index(tokenizer.eot_token)]
            yield i, row


def stream_sample(model, tokenizer, prompt: list[int], settings: SampleSettings, *, seed: int) -> Iterator[int]:
    """The tokens of sample 0 (the same as `sample_tokens`' first), one by one as they are chosen."""
    device = model.transformer.wte.weight.device
    idx = torch.tensor([prompt], dtype=torch.long, device=device)
    for step in generate_stream(model, idx, seed=seed, **_decode_options(model, tokenizer, settings)):
        token = int(step[0])
        if settings.stop_at_end_of_text and token == tokenizer.eot_token:
            return
        yield token


def write_text(tokens, tokenizer, out) -> int:
    """Write the text of each token as it arrives (a character split across tokens is held back until it is
    whole), then a newline; returns the number of tokens."""
    text, count = TextStream(tokenizer), 0
    for token in tokens:
        count += 1
        piece = text.push(token)
        if piece:
            out.write(piece)
            out.flush()
    out.write(text.flush() + "\n")
    return count
