"""Muon: momentum SGD whose update for each 2-D weight matrix is orthogonalised by a Newton–Schulz iteration.

After Keller Jordan's Muon (https://kellerjordan.github.io/posts/muon/, github.com/KellerJordan/Muon) and its use in
modded-nanogpt (github.com/KellerJordan/modded-nanogpt, `train_gpt.py`): the quintic Newton–Schulz coefficients
(3.4445, -4.7750, 2.0315), 5 iterations in bf16, the sqrt(max(1, fan_out / fan_in)) scale, and sharing the
orthogonalisation between data-parallel ranks all come from there. This file is our own implementation of the idea.

For a momentum-averaged gradient G = U S Vᵀ, Muon steps along (roughly) U Vᵀ: every singular direction of the update
gets the same size, so the rare directions the raw gradient barely moves get learned too. Newton–Schulz gives U Vᵀ
without an SVD, using only matmuls; the quintic coefficients are chosen for speed, not exactness, so the singular
values come out in a band around 1 (roughly 0.7 to 1.2), not exactly 1 — which is all Muon needs.

Only the hidden 2-D matrices of the transformer blocks belong here; embeddings, the output head, gains and biases
stay on AdamW (see gpt2lab.train.optim.muon_parameter_names).
"""

import torch
import torch.distributed as dist

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(G: torch.Tensor, steps: int = 5, eps: float = 1e-7, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Approximately orthogonalise G (a matrix, or a batch of matrices in the last two dims) -> ~U Vᵀ, in `dtype`.

    X is first divided by its Frobenius norm (>= its spectral norm), so every singular value starts in [0, 1], where
    the iteration X <- a X + (b A + c A²) X with A = X Xᵀ pushes each one towards 1. A = X Xᵀ is the Gram matrix of
    the smaller side: a wide X is used as it is, a tall one is transposed first (and back at the end), so A is
    min(rows, cols) square. The result is transpose-equivariant: orthogonalising Gᵀ gives the transpose.
    """
    a, b, c = NS_COEFFICIENTS
    X = G.to(dtype)
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * (A @ A)) @ X
    return X.mT if tall else X


def orthogonalised_updates(updates: torch.Tensor, steps: int, split: int, dtype: torch.dtype) -> torch.Tensor:
    """The Muon step directions for n weights of one shape, (n, fan_in, fan_out), stored as our Conv1D keeps them
    (HF's layout), orthogonalised together: one batched Newton-Schulz instead of n small ones, whose fixed cost per
    matmul dominates for a small model's matrices (the 24 of the demo model: 42 -> 20 ms per step in bf16 on a
    2-core CPU).

    `split` > 1 cuts the output columns into that many equal blocks orthogonalised separately (c_attn's q, k, v).
    Orthogonalising the stored (in, out) matrix is the same as orthogonalising nn.Linear's (out, in) transpose, but
    the shape scale must be read the right way round: Muon's sqrt(max(1, rows / cols)) for an (out, in) weight is
    sqrt(max(1, fan_out / fan_in)) = sqrt(max(1, cols / rows)) here. It makes the update's RMS per element roughly
    independent of the shape (c_fc, 768 -> 3072, gets 2; mlp c_proj, 3072 -> 768, gets 1).
    """
    n, fan_in, fan_out = updates.shape
    blocks = updates.view(n, fan_in, split, fan_out // split).transpose(1, 2)  # (n, split, fan_in, fan_out / split)
    ortho = newton_schulz(blocks, steps, dtype=dtype).to(updates.dtype)
    scale = max(1.0, (fan_out // split) / fan_in) ** 0.5
    return (ortho * scale).transpose(1, 2).reshape(n, fan_in, fan_out)  # each [i] contiguous, as broadcast needs


def orthogonalised_update(update: torch.Tensor, steps: int, split: int, dtype: torch.dtype) -> torch.Tensor:
    """The Muon step direction of one weight (fan_in, fan_out): `orthogonalised_updates` of a batch of one."""
    return orthogonalised_updates(update[None], steps, split, dtype)[0]


class Muon(torch.optim.Optimizer):
    """Muon for 2-D weights. Per group: lr, momentum, nesterov, ns_steps, weight_decay (decoupled, as AdamW's), and
    split (1, or 3 to orthogonalise a fused q|k|v weight as three matrices).

    Every step:  buf = momentum * buf + grad;  g = grad + momentum * buf (Nesterov) or buf;
                 p = p * (1 - lr * weight_decay) - lr * orthogonalised_update(g).

    Under torch.distributed the gradients are already averaged (DDP), so every rank would compute the same
    updates: instead rank r orthogonalises the matrices i with i % world_size == r (those of one shape together, in
    one batched Newton-Schulz), and each update is broadcast from the rank that computed it. The momentum buffers
    are updated on every rank (cheap, elementwise) and so are identical everywhere, as the checkpoint (rank 0's
    state) assumes.

    `ns_dtype` (bf16 on GPUs; float32 on CPUs without native bf16, where emulated bf16 is very slow) is a property
    of the machine, not of the run, so it is not in the state_dict.
    """

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 weight_decay: float = 0.0, split: int = 1, ns_dtype: torch.dtype = torch.bfloat16):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay,
                        split=split)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2 or p.size(1) % group["split"]:
                    raise ValueError(f"Muon takes 2-D weights whose columns divide into {group['split']} blocks; "
                                     f"got shape {tuple(p.shape)}")
        self.ns_dtype = ns_dtype

    @staticmethod
    def owns(group: dict) -> bool:
        """Whether a param group (of a CombinedOptimizer, say) is one of Muon's."""
        return "ns_steps" in group

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        matrices = []  # [param, group, update or None]: every Muon matrix, in the same order on every rank
        mine = {}  # (shape, split, ns_steps) -> [(position in matrices, direction)]: this rank's to orthogonalise
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:  # the same on every rank: DDP gives every rank the same set of gradients
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(p.grad)
                if len(matrices) % world == rank:
                    g = p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                    mine.setdefault((tuple(p.shape), group["split"], group["ns_steps"]), []).append((len(matrices), g))
                matrices.append([p, group, None])
        for (_, split, steps), directions in mine.items():  # matrices of one shape: one batched Newton-Schulz
            updates = orthogonalised_updates(torch.stack([g for _, g in directions]), steps, split, self.ns_dtype)
            for (position, _), update in zip(directions, updates):
                matrices[position][2] = update
        pending = []
        for position, (p, group, update) in enumerate(matrices):
            if distributed:  # each update comes from the rank that computed it; issued in the same order everywhere
                update = update if update is not None else torch.empty_like(p)
                pending.append((p, group, update, dist.broadcast(update, src=position % world, async_op=True)))
            else:
                pending.append((p, group, update, None))
        for p, group, update, work in pending:
            if work is not None:
                work.wait()
            if group["weight_decay"]:
                p.mul_(1 - group["lr"] * group["weight_decay"])
            p.add_(update, alpha=-group["lr"])
        return loss


class CombinedOptimizer:
    """Several optimizers over disjoint parameters, driven as one: `param_groups` lists all of theirs (so the
    trainer sets each group's LR as it does for one optimizer), step/zero_grad call each, and the state_dict is
    {name: that optimizer's state_dict} — tensors and plain containers, readable with torch.load(weights_only=True).
    GradScaler works with it too: it only needs param_groups and step()."""

    def __init__(self, **optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        # a property, not a list made once: load_state_dict replaces each optimizer's group dicts
        return [group for optimizer in self.optimizers.values() for group in optimizer.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for optimizer in self.optimizers.values():
            optimizer.step()
        return loss

    def state_dict(self) -> dict:
        return {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        if sorted(state) != sorted(self.optimizers):
            raise ValueError(f"optimizer state holds {sorted(state)}, expected {sorted(self.optimizers)}")
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state[name])
