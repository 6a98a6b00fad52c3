"""Evaluation: HellaSwag accuracy (`hellaswag.py`) and held-out loss / perplexity (`loss.py`).

Both take a model that is already on its device and in eval mode, so the training loop can call them every N
steps, and both split their work across ranks when torch.distributed is initialised (all ranks must call them).
"""

from gpt2lab.eval.hellaswag import HellaSwagResult
from gpt2lab.eval.loss import LossResult

__all__ = ["HellaSwagResult", "LossResult"]
