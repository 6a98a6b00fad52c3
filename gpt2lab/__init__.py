"""gpt2lab: GPT-2 from scratch. Load OpenAI's checkpoints, look inside, sample, and train your own."""

from gpt2lab.gpt_config import GPTConfig
from gpt2lab.model import GPT, load_model
from gpt2lab.tokenizer import get_tokenizer

__all__ = ["GPT", "GPTConfig", "get_tokenizer", "load_model"]
__version__ = "0.1.0"
