"""The optimizers: AdamW with decay groups, or Muon for the blocks' matrices + AdamW for the rest (the learning-rate
schedules are schedule.py's)."""

import torch

from gpt2lab.runtime.device import native_bf16
from gpt2lab.train.config import OptimSection
from gpt2lab.train.muon import CombinedOptimizer, Muon


def param_groups(model: torch.nn.Module, weight_decay: float, params=None) -> list[dict]:
    """Decay every tensor with >= 2 dims (matmul weights, embeddings); never biases or LayerNorm gains.

    Decaying a gain or a bias pulls it towards 0 for no benefit; weight decay is meant to regularise the
    weights that mix features. The tied wte/lm_head tensor appears once (named_parameters deduplicates).
    `params`: only these (default: all of the model's trainable parameters).
    """
    params = [p for p in model.parameters() if p.requires_grad] if params is None else params
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def muon_parameter_names(model: torch.nn.Module) -> list[str]:
    """THE rule for which parameters Muon trains (everything else goes to AdamW): the 2-D weights inside the
    transformer blocks, i.e. attn.c_attn, attn.c_proj, mlp.c_fc and mlp.c_proj of every layer. Not the token
    embedding (which is also the tied output head: Muon's equal-size singular directions suit hidden
    feature-to-feature maps, not a lookup table or the logits layer), not wpe, LayerNorm gains or any bias."""
    return [name for name, p in model.named_parameters()
            if p.requires_grad and p.dim() == 2 and name.startswith("transformer.h.")]


def make_optimizer(model: torch.nn.Module, optim: OptimSection, device: torch.device):
    """torch AdamW (optim.name = adamw), or a CombinedOptimizer of Muon + AdamW (optim.name = muon).

    Each param group gets its peak LR in "lr" here; the trainer overwrites "lr" every step with the schedule
    (set_lr). The AdamW settings (lr, betas, eps, weight_decay) serve AdamW's parameters in both cases."""
    adamw = dict(lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps, **adamw_implementation(device))
    if optim.name == "adamw":
        return torch.optim.AdamW(param_groups(model, optim.weight_decay), **adamw)
    muon_names = set(muon_parameter_names(model))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    muon_settings = dict(lr=optim.muon_lr, momentum=optim.muon_momentum, nesterov=optim.muon_nesterov,
                         ns_steps=optim.muon_ns_steps, weight_decay=optim.muon_weight_decay,
                         ns_coefficients=optim.muon_ns_coefficients, cautious_wd=optim.cautious_wd,
                         normuon_beta2=optim.muon_normuon_beta2 if optim.muon_normuon else 0.0)
    fused = [p for n, p in named if n in muon_names and n.endswith("attn.c_attn.weight")]
    other = [p for n, p in named if n in muon_names and not n.endswith("attn.c_attn.weight")]
    groups = [{"params": other, "split": 1}, {"params": fused, "split": 3 if optim.muon_split_qkv else 1}]
    # Newton-Schulz in bf16 where the device computes it natively (GPUs, AMX/AVX512-BF16 CPUs); float32 elsewhere
    ns_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(
        optim.muon_ns_dtype, torch.bfloat16 if native_bf16(device) else torch.float32)
    muon = Muon([g for g in groups if g["params"]], **muon_settings, ns_dtype=ns_dtype)
    rest = [p for n, p in named if n not in muon_names]
    return CombinedOptimizer(muon=muon, adamw=torch.optim.AdamW(param_groups(model, optim.weight_decay, rest), **adamw))


def describe_optimizer(model: torch.nn.Module, optim: OptimSection) -> str:
    """One start-up line: which optimizer trains how many tensors / parameters."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    total = sum(p.numel() for _, p in named)
    if optim.name == "adamw":
        return f"optimizer: AdamW (lr {optim.lr:g}) on all {len(named)} tensors ({total:,} parameters)"
    muon_names = set(muon_parameter_names(model))
    n_muon = sum(p.numel() for n, p in named if n in muon_names)
    c_attn = "three matrices (q, k, v)" if optim.muon_split_qkv else "one matrix"
    return (f"optimizer: Muon (lr {optim.muon_lr:g}, momentum {optim.muon_momentum:g}) on {len(muon_names)} block "
            f"matrices ({n_muon:,} parameters; c_attn as {c_attn}), AdamW (lr {optim.lr:g}) on "
            f"{len(named) - len(muon_names)} tensors ({total - n_muon:,} parameters: embeddings/head, LayerNorm, "
            f"biases)")


def adamw_implementation(device: torch.device) -> dict:
    """fused (one pass over each parameter's p, grad, m, v) on CUDA and CPU; foreach (batched tensor ops, one
    pass per arithmetic step) elsewhere. Same update as the plain per-parameter loop, only faster: on a 2-core
    CPU a gpt2 step takes 100 ms fused vs 330 ms foreach. (transformers' Trainer also defaults to fused.)"""
    return {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
