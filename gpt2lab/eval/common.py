"""What both evaluations need from a model they did not build: the plain module, its device, the logits they score."""

from __future__ import annotations

import torch


def plain_module(model: torch.nn.Module) -> torch.nn.Module:
    """The module under DDP and torch.compile wrappers.

    Evaluation batches change shape from one forward to the next (HellaSwag rows differ in length, the last
    loss window is short). Through a torch.compile'd module every new shape would trigger a recompilation
    (tens of seconds each, and a recompile limit after which it falls back anyway), so evaluation runs the
    eager module underneath: same weights, same device, no compilation. Through DDP, a forward pass would
    take part in DDP's gradient bookkeeping, which evaluation does not want either.
    """
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def logits_at(model, inputs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Logits (B, K, vocab) at `positions` (B, K) of each row of `inputs` (B, T).

    The vocabulary projection is the largest matmul of a small GPT (and 30% of GPT-2 124M's), yet evaluation
    needs it only where a target is scored: a HellaSwag row's ending (a third of the row or less), the new
    targets of a sliding window. So when the model has GPT-2's final LayerNorm (`transformer.ln_f`, whose output
    goes straight into lm_head), a forward hook passes on only those positions; the blocks before it are
    unaffected. Any other model computes all logits and the positions are picked afterwards: same numbers.
    """

    def pick(hidden):
        return hidden.gather(1, positions[..., None].expand(-1, -1, hidden.size(-1)))

    ln_f = getattr(getattr(model, "transformer", None), "ln_f", None)
    if ln_f is None:
        return pick(model(inputs)[0])
    handle = ln_f.register_forward_hook(lambda module, args, output: pick(output))
    try:
        logits, _ = model(inputs)
    finally:
        handle.remove()
    return logits
