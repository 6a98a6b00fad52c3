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
# Polar Express (Amsel, Persson, Musco & Gower 2025, arXiv 2505.16932; in modded-nanogpt since 2025): a different
# (a, b, c) for each iteration, each the minimax-optimal odd quintic for where the singular values are by then, with
# a 2 % safety margin on the starting norm. The singular values land much closer to 1 in the same 5 iterations.
POLAR_EXPRESS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
COEFFICIENT_SCHEDULES = ("quintic", "polar_express")


def ns_schedule(name: str, steps: int) -> tuple[tuple[float, float, float], ...]:
    """The (a, b, c) of each of `steps` iterations: the fixed quintic every time, or Polar Express's first `steps`."""
    if name == "quintic":
        return (NS_COEFFICIENTS,) * steps
    if name == "polar_express" and steps <= len(POLAR_EXPRESS):
        return POLAR_EXPRESS[:steps]
    raise ValueError(f"no Newton-Schulz schedule '{name}' of {steps} steps")


def newton_schulz(G: torch.Tensor, steps: int = 5, eps: float = 1e-7, dtype: torch.dtype = torch.bfloat16,
                  coefficients: str = "quintic") -> torch.Tensor:
    """Approximately orthogonalise G (a matrix, or a batch of matrices in the last two dims) -> ~U Vᵀ, in `dtype`.

    X is first divided by its Frobenius norm (>= its spectral norm), so every singular value starts in [0, 1], where
    the iteration X <- a X + (b A + c A²) X with A = X Xᵀ pushes each one towards 1. A = X Xᵀ is the Gram matrix of
    the smaller side: a wide X is used as it is, a tall one is transposed first (and back at the end), so A is
    min(rows, cols) square. The result is transpose-equivariant: orthogonalising Gᵀ gives the transpose.
    """
    schedule = ns_schedule(coefficients, steps)
    X = G.to(dtype)
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    margin = 1.02 if coefficients == "polar_express" else 1.0  # its coefficients assume a spectral norm <= 1/1.02
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * margin + eps)
    for a, b, c in schedule:
        A = X @ X.mT
        X = a * X + (b * A + c * (A @ A)) @ X
    return X.mT if tall else X


def orthogonalised_updates(updates: torch.Tensor, steps: int, split: int, dtype: torch.dtype,
                           coefficients: str = "quintic") -> torch.Tensor:
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
    ortho = newton_schulz(blocks, steps, dtype=dtype, coefficients=coefficients).to(updates.dtype)
    scale = max(1.0, (fan_out // split) / fan_in) ** 0.5
    return (ortho * scale).transpose(1, 2).reshape(n, fan_in, fan_out)  # each [i] contiguous, as broadcast needs


def orthogonalised_update(update: torch.Tensor, steps: int, split: int, dtype: torch.dtype,
                          coefficients: str = "quintic") -> torch.Tensor:
    """The Muon step direction of one weight (fan_in, fan_out): `orthogonalised_updates` of a batch of one."""
    return orthogonalised_updates(update[None], steps, split, dtype, coefficients)[0]


class Muon(torch.optim.Optimizer):
    """Muon for 2-D weights. Per group: lr, momentum, nesterov, ns_steps, ns_coefficients ("quintic" or
    "polar_express"), weight_decay (decoupled, as AdamW's), cautious_wd, normuon_beta2 (0: off), and split (1, or 3
    to orthogonalise a fused q|k|v weight as three matrices).

    Every step:  buf = momentum * buf + grad;  g = grad + momentum * buf (Nesterov) or buf;
                 u = orthogonalised_update(g), then NorMuon's per-neuron normalisation of u if normuon_beta2 > 0;
                 p = p * (1 - lr * weight_decay * mask) - lr * u,  mask = 1, or (cautious_wd) where u and p agree in
                 sign (the decay then only helps the step it goes with; lr carries the schedule, so the decay follows it).

    NorMuon (Li et al. 2025, arXiv 2510.05491; modded-nanogpt): orthogonalisation equalises the singular values, not
    the size of each output neuron's row of the update, which can still differ a lot. An EMA (beta2) of each neuron's
    mean squared update divides it out, Adam-style, and the whole update is then rescaled to its Frobenius norm
    before, so the LR keeps its meaning. The EMA is per parameter state ("normuon_v"), so a resume restores it.

    Under torch.distributed rank r orthogonalises the matrices i with i % world_size == r (those of one shape
    together, in one batched Newton-Schulz). With DDP every rank holds the averaged gradients, and each update is
    broadcast from the rank that computed it; the momentum buffers are updated on every rank (cheap, elementwise)
    and so are identical everywhere, as the checkpoint (rank 0's state) assumes. Under FSDP each rank holds a
    slice of every matrix (and of its momentum): Newton-Schulz needs the whole matrix, so its owner gathers the
    slices of the direction, orthogonalises it, and scatters the update's slices back.

    `ns_dtype` (bf16 on GPUs; float32 on CPUs without native bf16, where emulated bf16 is very slow) is a property
    of the machine, not of the run, so it is not in the state_dict.
    """

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 weight_decay: float = 0.0, split: int = 1, ns_dtype: torch.dtype = torch.bfloat16,
                 ns_coefficients: str = "quintic", cautious_wd: bool = False, normuon_beta2: float = 0.0):
        ns_schedule(ns_coefficients, ns_steps)  # refuse an unknown schedule now, not at the first step
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay,
                        split=split, ns_coefficients=ns_coefficients, cautious_wd=cautious_wd,
                        normuon_beta2=normuon_beta2)
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
        matrices = []  # (param, group, direction): every Muon matrix with a gradient, the same order on every rank
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:  # the same on every rank: every rank gets the same set of gradients
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(p.grad)
                matrices.append((p, group, p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf))
        sharded = bool(matrices) and hasattr(matrices[0][0], "to_local")  # FSDP: DTensor shards
        updates = self._sharded_updates(matrices) if sharded else self._replicated_updates(matrices)
        for (p, group, _), update in zip(matrices, updates):
            local = p.to_local() if sharded else p
            if group.get("normuon_beta2", 0.0):
                update = self._normuon(p, update, group["normuon_beta2"], sharded)
            if group["weight_decay"]:
                decay = group["lr"] * group["weight_decay"]
                if group.get("cautious_wd", False):  # decay only the entries the update also shrinks
                    local.sub_(local * (update * local > 0) * decay)
                else:
                    local.mul_(1 - decay)
            local.add_(update, alpha=-group["lr"])
        return loss

    def _normuon(self, p, update: torch.Tensor, beta2: float, sharded: bool) -> torch.Tensor:
        """NorMuon: `update` (this rank's rows of it under FSDP) with each output neuron (a column in the stored
        (fan_in, fan_out) layout) divided by the root of its EMA'd mean square, at the same Frobenius norm. Every
        rank computes the same column sums (the whole update under DDP, all-reduced row shards under FSDP), so the
        state is identical everywhere, as the checkpoint (rank 0's) assumes."""
        sq = update.float().square().sum(dim=0)
        if sharded:
            dist.all_reduce(sq)  # each rank holds some rows of every column
        state = self.state[p]
        if "normuon_v" not in state:
            state["normuon_v"] = torch.zeros_like(sq)
        v = state["normuon_v"]
        v.lerp_(sq / p.size(0), 1 - beta2)
        scale = v.clamp_min(1e-20).rsqrt()
        scale = scale * (sq.sum() / (sq * scale.square()).sum().clamp_min(1e-30)).sqrt()  # keep ||update||_F
        return update * scale.to(update.dtype)

    def _orthogonalise(self, matrices, directions: dict) -> dict:
        """{position: update} for the whole-matrix `directions` {position: direction} this rank owns, those of one
        shape in one batched Newton-Schulz."""
        by_kind = {}
        for position, g in directions.items():
            group = matrices[position][1]
            kind = (tuple(g.shape), group["split"], group["ns_steps"], group.get("ns_coefficients", "quintic"))
            by_kind.setdefault(kind, []).append(position)
        updates = {}
        for (_, split, steps, coefficients), positions in by_kind.items():
            batch = orthogonalised_updates(torch.stack([directions[i] for i in positions]), steps, split, self.ns_dtype,
                                           coefficients)
            updates.update(zip(positions, batch))
        return updates

    def _replicated_updates(self, matrices) -> list:
        """Every rank holds every whole matrix (one process, or DDP's averaged gradients): matrix i is
        orthogonalised by rank i % world, then broadcast from it, issued in the same order everywhere."""
        rank, world = _rank_and_world()
        updates = self._orthogonalise(matrices, {i: g for i, (_, _, g) in enumerate(matrices) if i % world == rank})
        if world == 1:
            return [updates[i] for i in range(len(matrices))]
        out, works = [], []
        for i, (p, _, _) in enumerate(matrices):
            out.append(updates.get(i, torch.empty_like(p)))
            works.append(dist.broadcast(out[-1], src=i % world, async_op=True))
        for work in works:
            work.wait()
        return out

    def _sharded_updates(self, matrices) -> list:
        """FSDP: each rank holds a slice of every matrix's rows (dim-0 shards, the last ones shorter or empty).
        Matrix i's owner, rank i % world, gathers its direction's shards, orthogonalises the whole matrix, and
        sends each rank its rows of the update back; each rank returns its own rows of every update."""
        rank, world = _rank_and_world()
        shards, gathering, works = [], {}, []
        for i, (p, _, g) in enumerate(matrices):
            local, rows = g.to_local(), p.size(0)
            rows_per_rank = -(-rows // world)
            shards.append((local.size(0), rows, rows_per_rank))
            padded = torch.nn.functional.pad(local, (0, 0, 0, rows_per_rank - local.size(0)))
            received = [torch.empty_like(padded) for _ in range(world)] if i % world == rank else None
            works.append(dist.gather(padded, received, dst=i % world, async_op=True))
            if received is not None:
                gathering[i] = received
        for work in works:
            work.wait()
        whole = {i: torch.cat(parts)[: shards[i][1]] for i, parts in gathering.items()}
        updates = self._orthogonalise(matrices, whole)
        out, works = [], []
        for i, (local_rows, rows, rows_per_rank) in enumerate(shards):
            mine = torch.empty((rows_per_rank, matrices[i][2].size(1)), dtype=matrices[i][2].dtype,
                               device=matrices[i][2].to_local().device)
            parts = None
            if i in updates:
                parts = list(torch.nn.functional.pad(updates[i], (0, 0, 0, rows_per_rank * world - rows))
                             .split(rows_per_rank))
            works.append(dist.scatter(mine, parts, src=i % world, async_op=True))
            out.append(mine[:local_rows])
        for work in works:
            work.wait()
        return out


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


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
