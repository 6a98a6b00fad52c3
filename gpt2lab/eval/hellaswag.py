"""HellaSwag accuracy, scored completion-style, batched, and split across ranks.

HellaSwag (Zellers et al. 2019, https://github.com/rowanz/hellaswag) gives a context and four endings, one of
them right. A language model "answers" by how likely it finds each ending after the context. As in OpenAI's
GPT-2 evaluation as reproduced by build-nanogpt (GPT-2 124M: acc 0.2859, acc_norm 0.2955):
  - tokens: the context, then the ending tokenised as " " + ending (the space belongs to the ending);
  - for each ending, the cross-entropy of its tokens given everything before them;
  - acc      = share of examples whose right ending has the lowest *summed* loss;
  - acc_norm = share whose right ending has the lowest *mean* (per-token) loss, which does not favour short
    endings.
Where build-nanogpt runs one example (4 rows) per forward pass, we put several examples x 4 endings in one
batch, padded on the right. Right padding is harmless under causal attention (a position never sees the
positions after it), and padded positions get target -100, so they add nothing to any loss. Logits are
computed only where an ending token is predicted (common.logits_at).

A row longer than the model's context is cropped from the left: the start of the context is dropped and the
ending kept whole (only an ending longer than the whole context would lose its start too). The released models
have 1024 positions; no HellaSwag example comes near that, but a small model trained with a short context may.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from gpt2lab.runtime import distributed
from gpt2lab.runtime import memory
from gpt2lab.storage.atomic import atomic_path
from gpt2lab.storage.cache import cache_dir
from gpt2lab.runtime.device import autocast
from gpt2lab.errors import BadValue, GPT2LabError
from gpt2lab.eval.common import logits_at, model_device, plain_module
from gpt2lab.tokenizer import get_tokenizer

VAL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
VAL_FILE = "hellaswag_val.jsonl"
VAL_EXAMPLES = 10_042
NUM_ENDINGS = 4
PAD_TOKEN = 0  # any valid id: padded positions are never targets and never seen by earlier positions


@dataclass
class Example:
    ctx: str
    endings: list[str]
    label: int


@dataclass
class TokenizedExample:
    context: list[int]
    endings: list[list[int]]
    label: int


@dataclass
class HellaSwagResult:
    acc: float
    acc_norm: float
    n: int
    examples_per_s: float
    correct: int = 0
    correct_norm: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------- the data


def load_examples(path=None, limit: int | None = None) -> list[Example]:
    """Examples of a HellaSwag JSONL file; `path=None`: the official validation set (downloaded once)."""
    if limit is not None and limit <= 0:
        raise BadValue("limit", f"must be a positive number of examples, got {limit}")
    path = Path(path).expanduser() if path is not None else official_val_file()
    if path.is_dir():
        raise BadValue("data", f"{path} is a directory; pass the HellaSwag .jsonl file itself")
    if not path.is_file():
        raise BadValue("data", f"{path} does not exist; pass an existing HellaSwag file ({VAL_FILE})")
    examples = []
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            for line_number, line in enumerate(f, start=1):
                if limit is not None and len(examples) >= limit:
                    break
                if line.strip():  # a blank line (e.g. a trailing one) is not an example
                    examples.append(parse_line(line, f"{path}:{line_number}"))
        except UnicodeDecodeError:
            raise GPT2LabError(f"{path}: not UTF-8 text; is this a HellaSwag .jsonl file?") from None
    if not examples:
        raise GPT2LabError(f"{path} holds no HellaSwag examples")
    return examples


def parse_line(line: str, where: str) -> Example:
    """One JSONL line in the official format (fields ctx, endings, label; others are ignored)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise GPT2LabError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:  # the decoder recurses per bracket: 100,000 "[" exhaust the stack
        raise GPT2LabError(f"{where}: not valid JSON (nested too deeply)") from None
    if not isinstance(row, dict):
        raise GPT2LabError(f"{where}: expected a JSON object with ctx, endings and label")
    for key in ("ctx", "endings", "label"):
        if key not in row:
            raise GPT2LabError(f"{where}: missing field {key!r} (a HellaSwag example has ctx, endings, label)")
    ctx, endings, label = row["ctx"], row["endings"], row["label"]
    if not isinstance(ctx, str):
        raise GPT2LabError(f"{where}: ctx must be a string")
    if not isinstance(endings, list) or len(endings) != NUM_ENDINGS:
        count = len(endings) if isinstance(endings, list) else type(endings).__name__
        raise GPT2LabError(f"{where}: endings must be a list of {NUM_ENDINGS} strings, got {count}")
    if not all(isinstance(e, str) for e in endings):
        raise GPT2LabError(f"{where}: endings must all be strings")
    if isinstance(label, str) and label.strip().isdigit():  # the HF `datasets` copy stores labels as text
        label = int(label)
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < NUM_ENDINGS:
        raise GPT2LabError(f"{where}: label must be 0, 1, 2 or 3 (the index of the right ending), got {label!r}")
    return Example(ctx=ctx, endings=list(endings), label=label)


def official_val_file() -> Path:
    """The cached official validation file, downloaded first if missing."""
    path = cache_dir() / VAL_FILE
    if not path.exists():
        download_val(path)
    return path


def download_val(destination: Path) -> None:
    """Fetch hellaswag_val.jsonl, check it is complete, and only then put it in place (atomically)."""
    how_to = (
        f"download {VAL_URL} on a connected machine and pass that file (or copy it to {destination})"
    )
    try:
        with urllib.request.urlopen(VAL_URL, timeout=60) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise BadValue("data", f"is needed: HellaSwag cannot be downloaded ({reason}); {how_to}") from None
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    if lines != VAL_EXAMPLES:
        raise BadValue("data", f"is needed: the downloaded HellaSwag has {lines} lines, not {VAL_EXAMPLES}; {how_to}")
    with atomic_path(destination) as tmp:
        tmp.write_bytes(data)


def tokenize(examples, tokenizer=None) -> list[TokenizedExample]:
    """Context tokens and " " + ending tokens (already tokenized examples pass through unchanged).

    The training loop can call this once and pass the result to `evaluate` every time.
    """
    tokenizer = tokenizer or get_tokenizer()
    todo = [ex for ex in examples if not isinstance(ex, TokenizedExample)]
    texts = [text for ex in todo for text in (ex.ctx, *(" " + e for e in ex.endings))]
    encoded = iter(tokenizer.encode_batch(texts) if texts else [])
    out = []
    for ex in examples:
        if isinstance(ex, TokenizedExample):
            out.append(ex)
            continue
        context = next(encoded)
        endings = [next(encoded) for _ in range(NUM_ENDINGS)]
        out.append(TokenizedExample(context=context, endings=endings, label=ex.label))
    return out


# --------------------------------------------------------------------------------------------- scoring


def row_tokens(example: TokenizedExample, ending: int, block_size: int, eot_token: int = 50256):
    """(tokens, first_target): the row context + ending, cropped to fit, and where the ending starts.

    The model reads row[:-1] and predicts row[1:], so a row may hold block_size + 1 tokens. Longer rows lose
    tokens from the left. An empty context is replaced by <|endoftext|> so that the ending's first token has
    something to be predicted from.
    """
    context = example.context or [eot_token]
    tokens = context + example.endings[ending]
    cut = max(0, len(tokens) - (block_size + 1))
    first_target = max(1, len(context) - cut)  # row[0] is never a target: nothing comes before it
    return tokens[cut:], first_target


def ending_losses(model, examples: list[TokenizedExample], device=None, autocast_dtype=None):
    """(sum, mean): the loss of each ending of each example, two float32 tensors of shape (n, 4), on the CPU.

    One forward pass over all n x 4 rows, right-padded to the longest; logits only at the ending's positions.
    """
    model = plain_module(model)
    device = torch.device(device) if device is not None else model_device(model)
    rows = [row_tokens(ex, i, model.config.block_size) for ex in examples for i in range(NUM_ENDINGS)]
    width = max(len(tokens) for tokens, _ in rows) - 1
    scored = max(len(tokens) - first_target for tokens, first_target in rows)  # the longest ending
    inputs = torch.full((len(rows), width), PAD_TOKEN, dtype=torch.long)
    positions = torch.zeros((len(rows), scored), dtype=torch.long)  # where each ending token is predicted
    targets = torch.full((len(rows), scored), -100, dtype=torch.long)  # -100: padding, never a loss
    for r, (tokens, first_target) in enumerate(rows):
        row = torch.tensor(tokens, dtype=torch.long)
        inputs[r, : len(tokens) - 1] = row[:-1]
        n = len(tokens) - first_target
        positions[r, :n] = torch.arange(first_target - 1, len(tokens) - 1)  # position p predicts token p + 1
        targets[r, :n] = row[first_target:]
    inputs, positions, targets = inputs.to(device), positions.to(device), targets.to(device)
    with torch.no_grad(), autocast(device, autocast_dtype):
        logits = logits_at(model, inputs, positions)
    token_losses = F.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="none"
    ).view_as(targets)
    sums = token_losses.sum(dim=1)
    means = sums / (targets != -100).sum(dim=1)
    return sums.view(-1, NUM_ENDINGS).cpu(), means.view(-1, NUM_ENDINGS).cpu()


def score(model, examples, batch_size: int = 8, device=None, autocast_dtype=None, tokenizer=None):
    """(sum, mean) losses (n, 4) of all `examples` on this process, in their order, `batch_size` per forward."""
    if batch_size <= 0:
        raise BadValue("batch_size", f"must be a positive number of examples, got {batch_size}")
    vocab_size = plain_module(model).config.vocab_size
    if vocab_size < 50257:
        raise GPT2LabError(f"HellaSwag needs the GPT-2 vocabulary (50257 tokens); this model has {vocab_size}")
    examples = tokenize(examples, tokenizer)
    # Longest first, so that similar lengths share a batch (little padding) and memory peaks at once.
    order = sorted(range(len(examples)), key=lambda i: -_longest_row(examples[i]))
    _check_memory(model, [examples[i] for i in order[:batch_size]], batch_size, device, autocast_dtype)
    sums = torch.zeros(len(examples), NUM_ENDINGS)
    means = torch.zeros(len(examples), NUM_ENDINGS)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        sums[chunk], means[chunk] = ending_losses(model, [examples[i] for i in chunk], device, autocast_dtype)
    return sums, means


def _check_memory(model, first_batch, batch_size, device, autocast_dtype) -> None:
    """Refuse a --batch-size whose first (and largest) batch would not fit in memory, before computing any."""
    if not first_batch:
        return
    model = plain_module(model)
    config = model.config
    width = min(max(_longest_row(ex) for ex in first_batch), config.block_size + 1) - 1
    scored = min(width, max(len(e) for ex in first_batch for e in ex.endings))
    needed = memory.inference_bytes(config, len(first_batch) * NUM_ENDINGS, width, scored=scored,
                                    bytes_per_value=(autocast_dtype or torch.float32).itemsize)
    memory.check_fits("batch_size", batch_size, needed, device if device is not None else model_device(model))


def _longest_row(example: TokenizedExample) -> int:
    return len(example.context) + max(len(e) for e in example.endings)


def evaluate(model, examples, batch_size: int = 8, device=None, autocast_dtype=None, tokenizer=None):
    """HellaSwagResult over `examples` (Example or TokenizedExample).

    Under torch.distributed every rank must call this with the same examples: rank r scores examples
    r, r + world, r + 2 world, ... and the counts are summed over ranks, so every rank returns the full result.
    `model` is used as it is (on its device, in eval mode; a torch.compile'd or DDP model is unwrapped, see
    common.plain_module). `batch_size` counts examples: each forward pass holds 4 x batch_size rows.
    """
    started = time.perf_counter()
    rank, world_size = distributed.rank_and_world()
    mine = examples[rank::world_size]
    labels = torch.tensor([ex.label for ex in mine], dtype=torch.long)
    # Every rank runs as many forward passes as the others (a sharded model computes each one with all ranks):
    # the ranks with one example fewer score a copy of the first, left out of the counts.
    share = -(-len(examples) // world_size)
    padded = mine + examples[:1] * (share - len(mine))
    sums, means = score(model, padded, batch_size, device, autocast_dtype, tokenizer)
    sums, means = sums[: len(mine)], means[: len(mine)]
    counts = torch.tensor(
        [len(labels), (sums.argmin(dim=1) == labels).sum(), (means.argmin(dim=1) == labels).sum()],
        dtype=torch.long,
    )
    counts = distributed.all_reduce_sum(counts.to(model_device(plain_module(model)))).cpu()
    n, correct, correct_norm = (int(c) for c in counts)
    seconds = time.perf_counter() - started
    return HellaSwagResult(
        acc=correct / n if n else math.nan,
        acc_norm=correct_norm / n if n else math.nan,
        n=n,
        examples_per_s=n / seconds if seconds > 0 else math.inf,
        correct=correct,
        correct_norm=correct_norm,
        seconds=seconds,
    )

