"""Looking inside a GPT-2: its config, every weight tensor with shape and size, and plots of what it learned.

The plots follow the first steps of the GPT-2 reproduction: the learned position embeddings `wpe` (an image,
and a few channels as curves over position, which come out smooth and sinusoid-like in a trained model, noisy in
a random one) and a block of the first layer's attention weight.

Shapes are as stored, identical to Hugging Face's files: projection weights are (in, out) (`model.Conv1D`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from gpt2lab.storage.atomic import atomic_path, writable_directory
from gpt2lab.errors import BadValue

FIGURE_SIZE = (8, 6)  # inches; at DPI below every PNG is 800 x 600 pixels
DPI = 100
ATTENTION_BLOCK = 300  # the corner of the first layer's c_attn weight that is drawn
DEFAULT_CHANNELS = (150, 200, 250)  # the channels the GPT-2 reproduction plots, when the model has them


class InspectError(BadValue):
    """Plot settings that cannot be used (a channel the model lacks, a plot directory that is a file)."""


@dataclass
class ParameterRow:
    key: str
    shape: tuple[int, ...]
    dtype: str
    params: int
    tied_to: str | None = None  # a key sharing this tensor's storage (counted once in the totals)


def parameter_rows(model) -> list[ParameterRow]:
    """One row per state-dict key, in model order; tied tensors are marked, not counted twice."""
    rows, seen = [], {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        storage = id(tensor)  # keep_vars: a tied weight is the very same Parameter object under both keys
        rows.append(
            ParameterRow(
                key=key,
                shape=tuple(tensor.shape),
                dtype=str(tensor.dtype).removeprefix("torch."),
                params=tensor.numel(),
                tied_to=seen.get(storage),
            )
        )
        seen.setdefault(storage, key)
    return rows


def parameter_totals(model) -> dict[str, int]:
    """all / embedding (wte + wpe) / non-embedding parameter counts, tied weights counted once."""
    total = model.num_parameters()
    non_embedding = model.num_parameters(exclude_embeddings=True)
    return {"all": total, "embedding": total - non_embedding, "non-embedding": non_embedding}


def format_report(model) -> str:
    """The config, the key table and the totals, as plain text."""
    lines = ["config:"]
    for field, value in dataclasses.asdict(model.config).items():
        lines.append(f"  {field:<20} {value}")
    rows = parameter_rows(model)
    key_width = max(len("key"), *(len(r.key) for r in rows))
    shape_width = max(len("shape"), *(len(_shape(r.shape)) for r in rows))
    lines += ["", f"{'key':<{key_width}}  {'shape':<{shape_width}}  {'dtype':<9}  {'params':>13}"]
    for r in rows:
        params = f"{r.params:>13,}" if r.tied_to is None else f"(tied to {r.tied_to})"
        lines.append(f"{r.key:<{key_width}}  {_shape(r.shape):<{shape_width}}  {r.dtype:<9}  {params}")
    lines.append("")
    for name, count in parameter_totals(model).items():
        lines.append(f"{name + ' parameters:':<26} {count:>13,}")
    return "\n".join(lines)


def _shape(shape: tuple[int, ...]) -> str:
    return str(tuple(shape))


# --------------------------------------------------------------------------------------------- plots


def default_channels(n_embd: int) -> tuple[int, ...]:
    """150, 200, 250 when the model has them; otherwise three channels spread evenly (tiny models)."""
    if max(DEFAULT_CHANNELS) < n_embd:
        return DEFAULT_CHANNELS
    return tuple(sorted({n_embd * k // 4 for k in (1, 2, 3)}))


def write_plots(model, directory, channels=None) -> list[Path]:
    """Write the three PNGs into `directory` (created if needed); returns their paths."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise InspectError("plots", f"{directory} is a file; pass a directory for the PNGs (it is created if missing)")
    n_embd = model.config.n_embd
    channels = tuple(default_channels(n_embd) if channels is None else channels)
    bad = [c for c in channels if not 0 <= c < n_embd]
    if not channels or bad:
        raise InspectError("channels", f"must be in 0..{n_embd - 1} (the model's n_embd is {n_embd}), got {list(channels)}")
    writable_directory(directory)  # permission denied, read-only filesystem, a file in the way higher up

    wpe = model.transformer.wpe.weight.detach().float().cpu()
    c_attn = model.transformer.h[0].attn.c_attn.weight.detach().float().cpu()
    return [
        _save(_wpe_image(wpe), directory / "wpe.png"),
        _save(_wpe_channels(wpe, channels), directory / "wpe_channels.png"),
        _save(_attention_block(c_attn), directory / "h0_attn_c_attn_weight.png"),
    ]


def _figure():
    # A Figure of its own, not pyplot: no global figure registry, no GUI backend, safe in any process.
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGURE_SIZE, dpi=DPI, layout="constrained")
    return fig, fig.subplots()


def _wpe_image(wpe: torch.Tensor):
    fig, ax = _figure()
    image = ax.imshow(wpe.numpy(), aspect="auto", cmap="RdBu_r", interpolation="nearest")
    ax.set_title(f"Position embeddings wpe ({wpe.size(0)} positions x {wpe.size(1)} channels)")
    ax.set_xlabel("channel")
    ax.set_ylabel("position")
    fig.colorbar(image, ax=ax, label="weight")
    return fig


def _wpe_channels(wpe: torch.Tensor, channels) -> object:
    fig, ax = _figure()
    for c in channels:
        ax.plot(wpe[:, c].numpy(), label=f"channel {c}", linewidth=1)
    ax.set_title("Position embeddings wpe: selected channels over position")
    ax.set_xlabel("position")
    ax.set_ylabel("weight")
    ax.legend()
    return fig


def _attention_block(weight: torch.Tensor):
    rows, cols = min(ATTENTION_BLOCK, weight.size(0)), min(ATTENTION_BLOCK, weight.size(1))
    fig, ax = _figure()
    image = ax.imshow(weight[:rows, :cols].numpy(), cmap="gray", interpolation="nearest")
    ax.set_title(f"Layer 0 attention weight (c_attn)\nblock [:{rows}, :{cols}] of {weight.size(0)} x {weight.size(1)}")
    ax.set_xlabel("input channel")
    ax.set_ylabel("output unit (query part first)")
    fig.colorbar(image, ax=ax, label="weight")
    return fig


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:  # a reader never sees half a PNG
        fig.savefig(tmp, format="png", dpi=DPI)
    return path
