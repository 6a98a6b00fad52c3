"""`gpt2lab bench train`: training steps of ours and transformers' GPT-2, same weights, batch and dtype, both
through gpt2lab's one training step (train/step.py: forward, backward, clip, fused AdamW)."""

from __future__ import annotations

import statistics
from dataclasses import asdict

import torch

from gpt2lab.model.config import GPTConfig
from gpt2lab.model.gpt import GPT
from gpt2lab.runtime import memory
from gpt2lab.runtime.device import resolve_dtype
from gpt2lab.runtime.hardware import device_spec, peak_flops
from gpt2lab.runtime.perf import flops_per_token, measure_matmul_peak, time_calls
from gpt2lab.tools.bench.common import Row, add_dtype_ratios, copy_model, hf_twin, measure, report, widest
from gpt2lab.train.batch import StepMemory, parameter_counts
from gpt2lab.train.config import OptimSection
from gpt2lab.train.optim import adamw_implementation, make_optimizer
from gpt2lab.train.parallel import ParallelModel
from gpt2lab.train.step import TrainStep, repeat


def step_matmul_shapes(config: GPTConfig, batch_size: int, seq_len: int) -> list[tuple[int, int, int, int, bool, bool]]:
    """The matrix products of one training step of our GPT, as (batch, m, k, n, a_transposed, b_transposed): every
    projection's forward (x @ W), input gradient (dy @ Wᵀ) and weight gradient (xᵀ @ dy), and attention's
    q kᵀ and p v with their gradients, in the memory layouts autograd hands to the matmul kernels."""
    N, C, V, T = batch_size * seq_len, config.n_embd, config.vocab_size, seq_len
    heads, d = batch_size * config.n_head, config.n_embd // config.n_head
    shapes = []
    projections = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)] * config.n_layer + [(C, V)]  # ... + the head
    for fan_in, fan_out in projections:
        shapes += [(1, N, fan_in, fan_out, False, False),  # y = x W
                   (1, N, fan_out, fan_in, False, True),  # dx = dy Wᵀ
                   (1, fan_in, N, fan_out, True, False)]  # dW = xᵀ dy
    for _ in range(config.n_layer):
        shapes += [(heads, T, d, T, False, True),  # scores = q kᵀ
                   (heads, T, T, d, False, False),  # y = p v
                   (heads, T, d, T, False, True), (heads, T, T, d, True, False),  # dp = dy vᵀ, dv = pᵀ dy
                   (heads, T, T, d, False, False), (heads, T, T, d, True, False)]  # dq = ds k, dk = dsᵀ q
    return shapes


def measure_step_matmuls(config: GPTConfig, batch_size: int, seq_len: int, device: torch.device,
                         dtype: torch.dtype, repeats: int = 3) -> float:
    """Seconds that the matrix products of one training step take alone (median of `repeats`): the part of the
    step no implementation can avoid, so ms_per_iter minus this is what the rest of the step costs (attention's
    softmax, GELU, LayerNorm, the loss, casts, the optimizer, ...)."""
    def operand(b, rows, cols, transposed):  # (b, rows, cols), stored transposed if autograd hands it so
        return torch.randn(b, cols, rows, device=device, dtype=dtype).mT if transposed else \
            torch.randn(b, rows, cols, device=device, dtype=dtype)

    # one pair of operands per distinct shape, reused: the products are timed, not their allocation
    shapes = step_matmul_shapes(config, batch_size, seq_len)
    operands = {}
    for shape in set(shapes):
        b, m, k, n, a_t, b_t = shape
        a, w = operand(b, m, k, a_t), operand(b, k, n, b_t)
        operands[shape] = (a[0], w[0]) if b == 1 else (a, w)

    def step():
        for shape in shapes:
            a, w = operands[shape]
            torch.matmul(a, w)

    step()  # warm-up
    return statistics.median(time_calls(step, device, repeats))


def bench_train(
    config: GPTConfig,
    batch_size: int = 4,
    seq_len: int = 256,
    device: torch.device = torch.device("cpu"),
    dtypes=("float32", "bfloat16"),
    iters: int = 3,
    warmup: int = 2,
    repeats: int = 3,
    compare: bool = True,
    compile: bool = False,
) -> dict:
    """Training steps of ours and transformers', same weights, batch and dtype: float32 in full precision,
    bfloat16/float16 under autocast (weights and optimizer in float32), the way `gpt2lab train` runs them.
    `compile`: ours through torch.compile, as runtime.compile = true trains it (the warm-up steps compile)."""
    config.check_context(seq_len, "seq_len")
    widest_amp = None if widest(dtypes) == 4 else torch.bfloat16
    needed = StepMemory(config, parameter_counts(config, "adamw"), device_spec(device, widest_amp), 1, 0).estimate(
        batch_size, seq_len, 1).total
    memory.check_fits("batch_size", f"{batch_size} (x {seq_len} tokens)", needed, device, "for one training step")
    torch.manual_seed(0)
    base = GPT(config)
    idx = torch.randint(0, config.vocab_size, (batch_size, seq_len + 1), device=device)
    x, y = idx[:, :-1], idx[:, 1:]
    settings = OptimSection()  # the training defaults: AdamW (0.9, 0.95), weight decay 0.1, clip 1.0

    def hf_loss(model, inputs, targets):  # transformers shifts the labels itself
        return model(inputs, labels=inputs).loss

    fns = {}
    for name in dtypes:
        dtype = resolve_dtype(name)
        amp = None if dtype == torch.float32 else dtype
        ours = copy_model(base, device).train()
        step = TrainStep(ParallelModel(ours, compile=compile), make_optimizer(ours, settings, device), device=device,
                         amp_dtype=amp, grad_clip=settings.grad_clip)
        fns[("gpt2lab", name)] = lambda step=step: step(0, repeat((x, y)))
        if compare:
            hf = hf_twin(base).to(device).train()
            hf.config.use_cache = False
            # transformers' own recipe: AdamW over all parameters, fused like its Trainer's default on torch >= 2.8
            # (and like ours: the optimizer is not what is compared)
            optimizer = torch.optim.AdamW(hf.parameters(), lr=settings.lr, betas=(settings.beta1, settings.beta2),
                                          weight_decay=settings.weight_decay, **adamw_implementation(device))
            hf_step = TrainStep(ParallelModel(hf), optimizer, device=device, amp_dtype=amp,
                                grad_clip=settings.grad_clip, loss_fn=hf_loss)
            fns[("transformers", name)] = lambda step=hf_step: step(0, repeat((idx[:, :seq_len], idx[:, :seq_len])))

    reserved = {}
    times, peaks = measure(fns, device, iters, warmup, repeats, reserved=reserved)

    n_params = base.num_parameters()
    fpt = flops_per_token(n_params, config.n_layer, config.n_embd, seq_len)
    matmul_peak = {name: measure_matmul_peak(device, resolve_dtype(name)) for name in dtypes}
    matmuls_alone = {name: measure_step_matmuls(config, batch_size, seq_len, device, resolve_dtype(name), repeats)
                     for name in dtypes}
    rows = []
    for (impl, name), ts in times.items():
        median = statistics.median(ts)
        achieved = batch_size * seq_len / median * fpt
        extra = {"achieved_gflops": achieved / 1e9, "fraction_of_matmul_peak": achieved / matmul_peak[name],
                 # the same products timed alone: how much of the step is everything else
                 "matmuls_alone_ms": matmuls_alone[name] * 1e3, "matmul_share": matmuls_alone[name] / median}
        if (pub := peak_flops(device)) is not None:
            extra["mfu_vs_published_bf16_peak"] = achieved / pub
        if reserved[(impl, name)] is not None:  # CUDA: what the caching allocator held, besides what it handed out
            extra["peak_reserved_mb"] = reserved[(impl, name)]
        if peaks[(impl, name)] is not None:  # the planner's estimate against this measurement
            extra["peak_over_planner_estimate"] = peaks[(impl, name)] * 2**20 / needed
        rows.append(Row(impl, name, batch_size, batch_size * seq_len / median, median * 1e3, peaks[(impl, name)], extra))
    add_dtype_ratios(rows)
    return report("train", device, rows, {
        "config": asdict(config), "batch_size": batch_size, "seq_len": seq_len, "params": n_params,
        "compiled": compile, "planner_estimate_mb": needed / 2**20,
        "flops_per_token": fpt, "matmul_peak_gflops": {k: v / 1e9 for k, v in matmul_peak.items()},
        "matmuls_alone_ms": {k: v * 1e3 for k, v in matmuls_alone.items()},
    })
