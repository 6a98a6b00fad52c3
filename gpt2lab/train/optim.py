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
    AdamW = CautiousAdamW if optim.adamw_cautious_wd else torch.optim.AdamW
    if optim.name == "adamw":
        return AdamW(param_groups(model, optim.weight_decay), **adamw)
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
    return CombinedOptimizer(muon=muon, adamw=AdamW(param_groups(model, optim.weight_decay, rest), **adamw))


class CautiousAdamW(torch.optim.AdamW):
    """torch's AdamW (fused or not) whose decoupled weight decay acts only where the step and the weight agree in
    sign, i.e. where decaying moves the weight the way the step already does (cautious weight decay, Chen et al.
    2025, arXiv 2510.12402; Muon's version is in muon.py):  p = p0 - lr * u - lr * weight_decay * p0 * [u * p0 > 0].

    torch's kernels do not expose the Adam direction u, so each step runs them without decay and reads lr * u back
    as p0 - p, from a copy of the decayed tensors taken before: one float32 copy of those, alive during the step
    only (the planner counts it). Where the step is skipped (fp16's GradScaler on an overflow) p = p0, nothing
    agrees and nothing decays. The optimizer state is AdamW's, so a checkpoint loads in either class."""

    @torch.no_grad()
    def step(self, closure=None):
        decays = [group["weight_decay"] for group in self.param_groups]
        before = [[(p, p.detach().clone()) for p in group["params"] if p.grad is not None] if decay else []
                  for group, decay in zip(self.param_groups, decays)]
        for group in self.param_groups:
            group["weight_decay"] = 0.0
        try:
            loss = super().step(closure)
        finally:
            for group, decay in zip(self.param_groups, decays):
                group["weight_decay"] = decay
        for group, decay, pairs in zip(self.param_groups, decays, before):
            for p, p0 in pairs:  # p0 - p = lr * u, so the sign test is the one on u (lr > 0)
                p.sub_(p0 * ((p0 - p) * p0 > 0) * (group["lr"] * decay))
        return loss


def cautious_copy_parameters(model: torch.nn.Module, optim: OptimSection) -> int:
    """How many parameters CautiousAdamW copies during a step (0 without optim.adamw_cautious_wd): the decayed
    (>= 2-D) tensors AdamW trains, i.e. all of them under adamw and the embeddings under muon."""
    if not optim.adamw_cautious_wd or not optim.weight_decay:
        return 0
    muon_names = set(muon_parameter_names(model)) if optim.name == "muon" else set()
    return sum(p.numel() for n, p in model.named_parameters()
               if p.requires_grad and p.dim() >= 2 and n not in muon_names)


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
