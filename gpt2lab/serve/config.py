"""What a server is started with: the models (MODEL or NAME=MODEL), where it listens, and its limits.

Plain dataclasses with no web framework behind them, so that the CLI can build them (and refuse bad values)
without importing FastAPI.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from gpt2lab.errors import BadValue, GPT2LabError


@dataclass
class Limits:
    """What one request may ask for, and how many may be in flight: safe defaults for a server on a laptop."""

    max_tokens: int = 256  # the most a request may set max_tokens to
    max_prompt_tokens: int | None = None  # None: the model's context minus one
    max_n: int = 8  # completions per request: prompts x n
    max_body_bytes: int = 1 << 20
    max_concurrent_requests: int = 32  # accepted at once (generating or waiting for a row); more get a 429

    def check(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and value < 1:
                raise BadValue(f.name, f"must be at least 1, got {value}")


@dataclass
class ServeConfig:
    models: list[str]  # MODEL or NAME=MODEL
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "auto"
    dtype: str = "auto"  # as `gpt2lab sample`: bf16 where it decodes faster (device.decoding_dtype)
    batch_size: int = 8  # rows each model decodes together; each holds a KV cache for the whole context
    limits: Limits = field(default_factory=Limits)

    def check(self) -> None:
        if not 0 <= self.port <= 65535:
            raise BadValue("port", f"must be in 0..65535, got {self.port}")
        if self.batch_size < 1:
            raise BadValue("batch_size", f"must be at least 1, got {self.batch_size}")
        self.limits.check()
        parse_model_specs(self.models)


def parse_model_specs(specs: list[str]) -> list[tuple[str, str]]:
    """["gpt2", "mine=runs/x"] -> [("gpt2", "gpt2"), ("mine", "runs/x")]: (id, MODEL). A MODEL alone is served
    under its own name; NAME=MODEL chooses the name (a NAME has no '/')."""
    parsed = []
    for spec in specs:
        name, sep, source = spec.partition("=")
        if not (sep and name and "/" not in name):
            name, source = spec, spec
        if not source:
            raise GPT2LabError(f"{spec!r} names no model; use MODEL or NAME=MODEL")
        parsed.append((name, source))
    names = [name for name, _ in parsed]
    for name in names:
        if names.count(name) > 1:
            raise GPT2LabError(f"two models would be served as {name!r}; give them names: NAME=MODEL")
    return parsed
