"""GPTConfig: the shape of a GPT-2 (context, vocabulary, depth, width), the shapes OpenAI released, and the one
check that a sequence fits the context.

Its own module because everything that describes a model without building one needs it: the HF config.json
reader and writer (`gpt2lab.hf.format`), the training config, memory estimates. None of them needs the network.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpt2lab.errors import BadValue


class ContextLengthError(BadValue):
    """A sequence does not fit in the model's context (block_size)."""


@dataclass
class GPTConfig:
    block_size: int = 1024  # context length: number of learned position embeddings (HF: n_positions)
    vocab_size: int = 50257  # 50257 BPE tokens; training pads it to 50304 (a multiple of 128) for speed
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def check_context(self, length: int, param: str = "sequence", fix: str | None = None) -> None:
        """Refuse `length` tokens (the value of `param`) when they do not fit the context: the one place that
        says so. `fix`: what the caller can change (default: lower the value)."""
        if length > self.block_size:
            raise ContextLengthError(param, f"({length}) is longer than the model's context of {self.block_size} "
                                            f"tokens (block_size); {fix or 'lower it'}")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> GPTConfig:
        """The shapes OpenAI released: `gpt2` (124M), `gpt2-medium`, `gpt2-large`, `gpt2-xl`."""
        if name not in PRESETS:
            raise ValueError(f"unknown GPT-2 preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 355M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
}
