"""AdamW with GPT-2's weight-decay groups, and the warmup + cosine learning-rate schedule."""

import math

import torch

from gpt2lab.train.config import OptimSection, ScheduleSection


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay every tensor with >= 2 dims (matmul weights, embeddings); never biases or LayerNorm gains.

    Decaying a gain or a bias pulls it towards 0 for no benefit; weight decay is meant to regularise the
    weights that mix features. The tied wte/lm_head tensor appears once (named_parameters deduplicates).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: torch.nn.Module, optim: OptimSection, device: torch.device) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        param_groups(model, optim.weight_decay),
        lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps, **adamw_implementation(device),
    )


def adamw_implementation(device: torch.device) -> dict:
    """fused (one pass over each parameter's p, grad, m, v) on CUDA and CPU; foreach (batched tensor ops, one
    pass per arithmetic step) elsewhere. Same update as the plain per-parameter loop, only faster: on a 2-core
    CPU a gpt2 step takes 100 ms fused vs 330 ms foreach. (transformers' Trainer also defaults to fused.)"""
    return {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}


def lr_at(step: int, optim: OptimSection, schedule: ScheduleSection) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, cosine decay, then the floor.

    Warmup uses (step + 1) / warmup so the very first step already learns (nanoGPT's step-0 LR of 0 wastes it).
    """
    warmup, max_steps = schedule.warmup_steps, schedule.max_steps
    if step < warmup:
        return optim.lr * (step + 1) / warmup
    if step >= max_steps:
        return optim.min_lr
    progress = (step - warmup) / max(1, max_steps - warmup)  # 0 -> 1 over the decay
    return optim.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (optim.lr - optim.min_lr)
