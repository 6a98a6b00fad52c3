"""gpt2lab: GPT-2 from scratch. Load OpenAI's checkpoints, look inside, sample, and train your own."""

from gpt2lab.model.config import GPTConfig
from gpt2lab.model.gpt import GPT, load_model
from gpt2lab.tokenizer import get_tokenizer

__all__ = ["GPT", "GPTConfig", "get_tokenizer", "load_model"]
__version__ = "0.1.0"
