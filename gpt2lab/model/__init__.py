"""The network: `config` (GPTConfig, the shapes OpenAI released), `gpt` (GPT, its KV cache, the familiar entry
points), `cpu_decode` (the few-row products of CPU decoding).

GPT itself is `gpt2lab.GPT` (or `gpt2lab.model.gpt.GPT`): this package's init stays light so that the modules that
describe a model without building one (`gpt2lab.hf.format`) can import its config.
"""

from gpt2lab.model.config import GPTConfig

__all__ = ["GPTConfig"]
