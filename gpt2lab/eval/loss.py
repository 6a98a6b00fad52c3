"""Held-out loss and perplexity over a token stream, with a sliding window for streams longer than the context.

A stream is a 1-D sequence of token ids: a prepared shard (np.memmap of uint16, read window by window, never
loaded whole) or a text file tokenised on the fly as <|endoftext|> + text, the way prepared shards store a
document. Token i (i >= 1) is predicted from the tokens before it; token 0 of a stream has nothing before it
and is never a target.

The sliding window (as in Hugging Face's perplexity guide): each window holds at most `seq_len` input tokens
and scores only the `stride` targets that no earlier window scored, so every target is scored exactly once,
with at least seq_len - stride + 1 tokens of context (or all of them, near the start of a stream).
stride = seq_len (the default) gives non-overlapping chunks, the way the training loop and build-nanogpt
measure validation loss (so the numbers compare); a smaller stride gives each token more context (a lower,
slower, perplexity).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gpt2lab.runtime import distributed
from gpt2lab.runtime import memory
from gpt2lab.data.manifest import split_tokens
from gpt2lab.runtime.device import autocast
from gpt2lab.errors import BadValue, GPT2LabError
from gpt2lab.eval.common import logits_at, model_device, plain_module
from gpt2lab.tokenizer import get_tokenizer


@dataclass
class LossResult:
    loss: float  # mean cross-entropy per target token, in nats
    perplexity: float  # exp(loss)
    tokens: int  # number of target tokens scored
    seconds: float = 0.0
    tokens_per_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Window:
    """Input tokens [start, end) of one stream; it scores targets first_target ..= end (earlier ones are done)."""

    start: int
    end: int
    first_target: int


def windows(n_tokens: int, seq_len: int, stride: int) -> list[Window]:
    """The windows that score targets 1 .. n_tokens - 1 exactly once, `stride` new targets per window."""
    if not 1 <= stride <= seq_len:
        raise BadValue("stride", f"must be between 1 and the sequence length {seq_len}, got {stride}")
    out = []
    scored = 0  # targets 1 ..= scored are done
    while scored < n_tokens - 1:
        last = min(scored + stride, n_tokens - 1)  # the last target of this window
        out.append(Window(start=max(0, last - seq_len), end=last, first_target=scored + 1))
        scored = last
    return out


def evaluate_loss(
    model,
    tokens_or_memmaps,
    seq_len: int | None = None,
    batch_size: int = 8,
    stride: int | None = None,
    device=None,
    autocast_dtype=None,
    max_tokens: int | None = None,
) -> LossResult:
    """Mean loss over one stream (1-D array, memmap, tensor or list of ints) or a list of streams (shards).

    seq_len defaults to the model's context, stride to seq_len (see the module docstring); max_tokens stops
    after that many targets (from the first stream on). Under torch.distributed every rank must call this with
    the same arguments: the windows are dealt out round-robin and the sums are all-reduced.
    """
    model = plain_module(model)
    device = torch.device(device) if device is not None else model_device(model)
    seq_len = seq_len or model.config.block_size
    if not 1 <= seq_len <= model.config.block_size:
        raise BadValue("seq_len", f"must be between 1 and the model's context {model.config.block_size}, got {seq_len}")
    if batch_size <= 0:
        raise BadValue("batch_size", f"must be a positive number of windows, got {batch_size}")
    if max_tokens is not None and max_tokens <= 0:
        raise BadValue("max_tokens", f"must be positive, got {max_tokens}")
    stride = seq_len if stride is None else stride
    streams = _as_streams(tokens_or_memmaps, max_tokens)
    jobs = [(stream, w) for stream in streams for w in windows(len(stream), seq_len, stride)]
    if not jobs:
        raise GPT2LabError("nothing to evaluate: a loss needs at least 2 tokens")

    started = time.perf_counter()
    rank, world_size = distributed.rank_and_world()
    mine = jobs[rank::world_size]
    needed = memory.inference_bytes(model.config, min(batch_size, len(mine)), seq_len, scored=stride,
                                    bytes_per_value=(autocast_dtype or torch.float32).itemsize)
    memory.check_fits("batch_size", batch_size, needed, device)  # before the first (and largest) batch
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # summed on the device: no sync per batch
    for i in range(0, len(mine), batch_size):
        totals += torch.stack(_window_losses(model, mine[i : i + batch_size], device, autocast_dtype))
    loss_sum, count = distributed.all_reduce_sum(totals).tolist()
    seconds = time.perf_counter() - started
    loss = loss_sum / count
    return LossResult(
        loss=loss,
        perplexity=math.exp(min(loss, 700.0)),  # exp overflows a float past ~709
        tokens=int(count),
        seconds=seconds,
        tokens_per_s=count / seconds if seconds > 0 else math.inf,
    )


def _window_losses(model, jobs, device, autocast_dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss, number of targets) of a batch of windows, right-padded to the longest."""
    width = max(w.end - w.start for _, w in jobs)
    scored = max(w.end - w.first_target + 1 for _, w in jobs)
    inputs = torch.zeros((len(jobs), width), dtype=torch.long)
    positions = torch.zeros((len(jobs), scored), dtype=torch.long)
    targets = torch.full((len(jobs), scored), -100, dtype=torch.long)  # -100: padding, never a loss
    for r, (stream, w) in enumerate(jobs):
        row = torch.from_numpy(np.asarray(stream[w.start : w.end + 1], dtype=np.int64))
        inputs[r, : w.end - w.start] = row[:-1]
        # only targets first_target ..= end are new (earlier ones were scored by an earlier window); token t is
        # predicted at input position t - start - 1
        n = w.end - w.first_target + 1
        positions[r, :n] = torch.arange(w.first_target - w.start - 1, w.end - w.start)
        targets[r, :n] = row[w.first_target - w.start :]
    vocab_size = model.config.vocab_size
    largest = max(int(inputs.max()), int(targets.max()))
    if largest >= vocab_size:
        raise GPT2LabError(
            f"the data holds token id {largest}, beyond the model's vocabulary of {vocab_size}; wrong tokenizer?"
        )
    return summed_loss(model, inputs.to(device), targets.to(device), device, autocast_dtype, positions.to(device))


def summed_loss(model, inputs, targets, device, autocast_dtype, positions=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, number of targets), float64 tensors on the device, of one batch: `targets` (B, K) are
    the tokens predicted at `positions` (B, K) of `inputs` (B, T), or at every position when positions is None
    (K = T); -100 marks padding. The one loss computation of both the held-out loss and the trainer's val loss.

    Left on the device, so a GPU never waits for the host between batches. Under inference_mode (cheaper than
    no_grad: no version counters, no views tracked), except for an FSDP-sharded model, whose all-gathered
    parameter buffers outlive the forward pass and must not become inference tensors that training then updates.
    """
    sharded = hasattr(next(model.parameters()), "to_local")
    with (torch.no_grad() if sharded else torch.inference_mode()), autocast(device, autocast_dtype):
        logits = logits_at(model, inputs, positions) if positions is not None else model(inputs)[0]
        # float32 for the sum over 50k classes; a no-op (no copy) when the logits already are
        loss_sum = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100,
                                   reduction="sum")
        return loss_sum.double(), (targets != -100).sum().double()


def fixed_batches_loss(model, batches, device, autocast_dtype) -> float:
    """Mean loss over `batches` [(inputs, targets), ...] (the trainer's fixed val batches), over all ranks' tokens.
    Every rank must pass the same number of batches: a sharded model needs all ranks in every forward pass."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    for x, y in batches:
        totals += torch.stack(summed_loss(model, x.to(device), y.to(device), device, autocast_dtype))
    model.train(was_training)
    loss_sum, count = distributed.all_reduce_sum(totals).tolist()
    return loss_sum / count


def _as_streams(tokens_or_memmaps, max_tokens: int | None) -> list:
    """A list of 1-D streams, cut so that together they hold at most max_tokens targets."""
    if isinstance(tokens_or_memmaps, (list, tuple)) and tokens_or_memmaps and not np.isscalar(tokens_or_memmaps[0]):
        streams = list(tokens_or_memmaps)
    else:
        streams = [tokens_or_memmaps]
    streams = [s.cpu().numpy() if isinstance(s, torch.Tensor) else s for s in streams]
    streams = [np.asarray(s) if isinstance(s, (list, tuple)) else s for s in streams]
    for s in streams:
        if getattr(s, "ndim", 1) != 1:
            raise GPT2LabError(f"token streams must be 1-D, got shape {tuple(s.shape)}")
    if max_tokens is None:
        return streams
    cut, left = [], max_tokens
    for s in streams:
        if left <= 0:
            break
        take = min(left, max(0, len(s) - 1))
        cut.append(s[: take + 1])
        left -= take
    return cut



# --------------------------------------------------------------------------------------------- inputs


def text_file_tokens(path, tokenizer=None) -> np.ndarray:
    """A text file as one document: <|endoftext|> + its tokens, like a document in a prepared shard."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise GPT2LabError(f"{path} is not UTF-8 text; pass a text file or a prepared data directory") from None
    if not text.strip():
        raise GPT2LabError(f"{path} is empty; a loss needs some text")
    tokenizer = tokenizer or get_tokenizer()
    return np.array([tokenizer.eot_token, *tokenizer.encode(text)], dtype=np.int64)


def load_streams(path, split: str = "val", tokenizer=None) -> list:
    """The token streams of `--data PATH`: a prepared data directory's split, or a raw text file."""
    path = Path(path).expanduser()
    if path.is_dir():
        return shard_streams(path, split)
    if not path.exists():
        raise BadValue("data", f"{path} does not exist; pass a prepared data directory or a text file")
    if path.suffix == ".bin":
        raise GPT2LabError(f"{path} is a shard; pass the prepared data directory that holds its manifest.json")
    return [text_file_tokens(path, tokenizer)]


def shard_streams(data_dir: Path, split: str) -> list:
    """One uint16 memmap per shard of `split`, in manifest order (gpt2lab.data owns the format)."""
    return split_tokens(data_dir, split)
