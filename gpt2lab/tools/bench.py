"""`gpt2lab bench`: our implementation and the one users would otherwise use, side by side, in one process.

Every mode alternates the two implementations (ours, theirs, ours, theirs, ...) over the same inputs, drops
warm-up iterations, and reports medians, so that load from elsewhere on the machine hits both alike.
- train:    GPT forward + backward + AdamW step  vs  transformers.GPT2LMHeadModel, same weights and batch;
- generate: our KV-cached sampler                vs  transformers generate(use_cache=True, do_sample, top_k=50);
- prepare:  `gpt2lab prepare`'s tokenizer path   vs  raw tiktoken encode_ordinary_batch on all cores;
- serve:    `gpt2lab serve` over HTTP, N clients at once  vs  the same N requests one after another
            (aggregate tokens/s: what batching concurrent requests buys).
transformers is imported only here (and in tests): it is a benchmark dependency, never a runtime one.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from gpt2lab.runtime import memory
from gpt2lab.runtime.device import autocast, resolve_dtype
from gpt2lab.errors import GPT2LabError
from gpt2lab.model.config import GPTConfig
from gpt2lab.model.gpt import GPT
from gpt2lab.runtime.perf import flops_per_token, measure_matmul_peak, peak_flops, sync

BENCH_CONFIGS = {
    "gpt2": GPTConfig.from_preset("gpt2"),
    "tiny": GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=128, vocab_size=50257),
}


@dataclass
class Row:
    impl: str
    dtype: str
    batch_size: int
    tokens_per_s: float
    ms_per_iter: float
    peak_mem_mb: float | None = None
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- timing


def measure(fns: dict, device, iters: int = 1, warmup: int = 1, repeats: int = 3) -> tuple[dict, dict]:
    """Warm each fn up on its own (so each gets its own peak memory), then time `repeats` rounds of `iters`
    calls, alternating between fns so that load from elsewhere on the machine hits them alike.
    Returns ({name: [seconds per call]}, {name: peak MB or None})."""
    peaks = {}
    for name, fn in fns.items():
        with PeakMemory(device) as mem:
            for _ in range(warmup):
                fn()
        peaks[name] = mem.peak_mb
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            for _ in range(iters):
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                times[name].append(time.perf_counter() - t0)
    return times, peaks


class PeakMemory:
    """Peak memory of a block: CUDA allocator stats on GPUs; on Linux, the process's peak RSS (VmHWM),
    reset through /proc/self/clear_refs before the block so each implementation gets its own peak."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mb: float | None = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            with contextlib.suppress(OSError):
                Path("/proc/self/clear_refs").write_text("5")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            with contextlib.suppress(OSError, StopIteration, ValueError):
                status = Path("/proc/self/status").read_text().splitlines()
                line = next(l for l in status if l.startswith("VmHWM:"))
                self.peak_mb = int(line.split()[1]) / 1024
        return False


def measure_read_bandwidth(device: torch.device, mb: int = 1024, seconds: float = 1.0) -> float:
    """Bytes/s for streaming through a buffer larger than the caches: what batch-1 decoding is bound by."""
    x = torch.ones(mb * 2**20 // 4, device=device)
    x.sum()
    sync(device)
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        x.sum()
        count += 1
    sync(device)
    return x.numel() * 4 * count / (time.perf_counter() - t0)


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
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def environment(device: torch.device) -> dict:
    env = {
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    with contextlib.suppress(ImportError):
        import transformers

        env["transformers"] = transformers.__version__
    return env


def _transformers():
    try:
        import transformers
    except ImportError:
        raise GPT2LabError(
            "gpt2lab bench compares against transformers, which is not installed: pip install 'gpt2lab[bench]'"
        ) from None
    transformers.logging.set_verbosity_error()  # its notes about unused config fields are not ours to show
    return transformers


def hf_twin(model: GPT):
    """A transformers GPT2LMHeadModel holding exactly `model`'s weights."""
    from gpt2lab.hf.format import config_to_hf, state_dict_to_hf

    transformers = _transformers()
    hf_config = transformers.GPT2Config(**config_to_hf(model.config))
    hf = transformers.GPT2LMHeadModel(hf_config)
    missing, unexpected = hf.load_state_dict(state_dict_to_hf(model), strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)
    hf.tie_weights()
    return hf


# --------------------------------------------------------------------------------------------- train


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
) -> dict:
    """Training steps (forward + backward + AdamW) of ours and transformers', same weights, batch and dtype.

    float32 runs in full precision; bfloat16/float16 under autocast (weights and optimizer in float32), the way
    `gpt2lab train` runs them.
    """
    from gpt2lab.train.config import OptimSection
    from gpt2lab.train.optim import adamw_implementation, make_optimizer

    needed = memory.forward_bytes(config, batch_size, seq_len, training=True, bytes_per_value=_widest(dtypes))
    memory.check_fits(f"--batch-size {batch_size} with --seq-len {seq_len}", needed, device, "for one training step")
    torch.manual_seed(0)
    base = GPT(config)
    idx = torch.randint(0, config.vocab_size, (batch_size, seq_len + 1), device=device)
    x, y = idx[:, :-1], idx[:, 1:]

    def step_fn(model, optimizer, dtype, loss_of):
        def step():
            with autocast(device, dtype):
                loss = loss_of(model)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    fns = {}
    for name in dtypes:
        dtype = resolve_dtype(name)
        ours = _copy_model(base, device).train()
        fns[("gpt2lab", name)] = step_fn(ours, make_optimizer(ours, OptimSection(), device), dtype, lambda m: m(x, y)[1])
        if compare:
            hf = hf_twin(base).to(device).train()
            hf.config.use_cache = False
            # transformers' own recipe: AdamW over all parameters, fused like its Trainer's default on
            # torch >= 2.8 (and like ours: the optimizer is not what is compared), loss from labels (shifted inside)
            optimizer = torch.optim.AdamW(hf.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                          **adamw_implementation(device))
            fns[("transformers", name)] = step_fn(hf, optimizer, dtype, lambda m: m(idx[:, :seq_len], labels=idx[:, :seq_len]).loss)

    times, peaks = measure(fns, device, iters, warmup, repeats)

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
        rows.append(Row(impl, name, batch_size, batch_size * seq_len / median, median * 1e3, peaks[(impl, name)], extra))
    _add_dtype_ratios(rows)
    return _report("train", device, rows, {
        "config": asdict(config), "batch_size": batch_size, "seq_len": seq_len, "params": n_params,
        "flops_per_token": fpt, "matmul_peak_gflops": {k: v / 1e9 for k, v in matmul_peak.items()},
        "matmuls_alone_ms": {k: v * 1e3 for k, v in matmuls_alone.items()},
    })


def _add_dtype_ratios(rows: list[Row]) -> None:
    """Each row's tokens/s over the same implementation's at the same batch size in each other dtype measured,
    as extra["vs_<dtype>"] (e.g. a bfloat16 row's vs_float32 = 1.9: bf16 is 1.9x faster)."""
    for row in rows:
        for other in rows:
            if (other.impl, other.batch_size) == (row.impl, row.batch_size) and other.dtype != row.dtype:
                row.extra[f"vs_{other.dtype}"] = row.tokens_per_s / other.tokens_per_s


def _widest(dtypes) -> int:
    """Bytes per value of the widest dtype benchmarked: its run is the one that needs the most memory. Checked
    first by both model benchmarks, so an unknown dtype name is refused before anything is measured."""
    return max(resolve_dtype(name).itemsize for name in dtypes)


def _copy_model(model: GPT, device) -> GPT:
    clone = GPT(model.config).to(device).train()
    clone.load_state_dict(model.state_dict())
    return clone


# --------------------------------------------------------------------------------------------- generate


def bench_generate(
    config: GPTConfig,
    batch_sizes=(1, 8),
    new_tokens: int = 256,
    prompt_tokens: int = 8,
    device: torch.device = torch.device("cpu"),
    dtypes=("float32", "bfloat16"),
    repeats: int = 3,
    compare: bool = True,
    recompute: bool = False,
) -> dict:
    """Sampling (top-k 50) of ours and transformers'; with `recompute`, also the anchors' loop without a KV cache
    (the whole cropped context recomputed for every token), to show what the cache buys."""
    from gpt2lab.sampling.decode import generate, sample_next

    def recompute_loop(model, idx):
        generator = torch.Generator(device=idx.device).manual_seed(0)
        for _ in range(new_tokens):
            logits, _ = model(idx[:, -model.config.block_size :], last_logits_only=True)
            idx = torch.cat([idx, sample_next(logits[:, -1].float(), top_k=50, generator=generator)[:, None]], 1)

    largest = max(batch_sizes)
    cached = min(prompt_tokens + new_tokens, config.block_size)
    needed = memory.forward_bytes(config, largest, prompt_tokens, scored=1, cached=cached,
                                  bytes_per_value=_widest(dtypes))
    memory.check_fits(f"--batch-sizes {largest} with --new-tokens {new_tokens}", needed, device,
                      "to generate one batch")
    torch.manual_seed(0)
    base = GPT(config).eval()
    models = {d: _copy_model(base, "cpu").eval().to(device=device, dtype=resolve_dtype(d)) for d in dtypes}
    hf = hf_twin(base).to(device).eval() if compare else None
    rows = []
    for batch_size in batch_sizes:
        idx = torch.randint(0, min(config.vocab_size, 50257), (batch_size, prompt_tokens), device=device)
        fns = {}
        for d, model in models.items():
            fns[("gpt2lab", d)] = lambda m=model: generate(m, idx, new_tokens, temperature=1.0, top_k=50, seed=0)
        if hf is not None:
            mask = torch.ones_like(idx)

            def hf_generate():
                out = hf.generate(
                    idx, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                    do_sample=True, top_k=50, use_cache=True, pad_token_id=0,
                )
                assert out.shape[1] == prompt_tokens + new_tokens

            fns[("transformers", "float32")] = hf_generate
        if recompute:
            fns[("no-cache loop", dtypes[0])] = lambda m=models[dtypes[0]]: recompute_loop(m, idx)
        with torch.inference_mode():
            times, peaks = measure(fns, device, repeats=repeats)
        for (impl, d), ts in times.items():
            median = statistics.median(ts)
            rows.append(Row(impl, d, batch_size, batch_size * new_tokens / median, median * 1e3 / new_tokens,
                            peaks[(impl, d)]))
    # A decode step reads every weight once, for all the rows of the batch: memory bandwidth bounds it (for
    # small batches; large ones become matmul-bound, so their fraction of this bound falls).
    bandwidth = measure_read_bandwidth(device)
    n_params = base.num_parameters() - base.transformer.wpe.weight.numel()  # one wpe row is read per token
    for row in rows:
        bound = row.batch_size * bandwidth / (n_params * resolve_dtype(row.dtype).itemsize)
        row.extra["bandwidth_bound_tokens_per_s"] = bound
        row.extra["fraction_of_bound"] = row.tokens_per_s / bound
    _add_dtype_ratios(rows)
    return _report("generate", device, rows, {
        "config": asdict(config), "new_tokens": new_tokens, "prompt_tokens": prompt_tokens,
        "read_bandwidth_gb_s": bandwidth / 1e9,
    })


# --------------------------------------------------------------------------------------------- prepare


def bench_prepare(texts: list[str], repeats: int = 3, threads: int | None = None) -> dict:
    """`gpt2lab prepare`'s pipeline (tokenise + write shards) vs raw tiktoken, same texts, all cores."""
    from gpt2lab.data.prepare import PrepareConfig, prepare_documents
    from gpt2lab.data.document import Document
    from gpt2lab.tokenizer import get_tokenizer

    threads = threads or os.cpu_count() or 1
    encoding = get_tokenizer().encoding

    def raw():
        encoding.encode_ordinary_batch(texts, num_threads=threads)

    def ours():
        with tempfile.TemporaryDirectory() as tmp:
            config = PrepareConfig(["<memory>"], tmp, val_docs=0, threads=threads, progress=False)
            documents = (Document(text, f"#{i}") for i, text in enumerate(texts))
            prepare_documents(documents, Path(tmp), config, {"sources": ["<memory>"], "args": {}}, log=lambda *_: None)

    fns = {("gpt2lab", "uint16"): ours, ("tiktoken", "int"): raw}
    times, peaks = measure(fns, torch.device("cpu"), repeats=repeats)
    n_tokens = sum(len(t) + 1 for t in encoding.encode_ordinary_batch(texts, num_threads=threads))  # + EOT each
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    rows = []
    for (impl, dtype), ts in times.items():
        median = statistics.median(ts)
        rows.append(Row(impl, dtype, len(texts), n_tokens / median, median * 1e3, peaks[(impl, dtype)],
                        {"mb_per_s": n_bytes / median / 1e6}))
    return _report("prepare", torch.device("cpu"), rows,
                   {"documents": len(texts), "bytes": n_bytes, "tokens": n_tokens, "threads": threads})


# --------------------------------------------------------------------------------------------- serve


def bench_serve(config: GPTConfig, clients: int = 8, new_tokens: int = 256, prompt_tokens: int = 16,
                device: torch.device = torch.device("cpu"), dtype: str = "float32", repeats: int = 3) -> dict:
    """Aggregate completion tokens/s of one `gpt2lab serve` (random weights, on a loopback port): `clients`
    requests sent at once (threads) vs the same requests sent one after another. Each request samples
    `new_tokens` (top-k 50, its own seed) after its own `prompt_tokens` random tokens; tokens are counted from
    the responses' usage, so a completion that happens to end early is counted as it is."""
    import threading
    import urllib.request

    from gpt2lab.serve.config import Limits, ServeConfig
    from gpt2lab.serve.server import BackgroundServer

    if prompt_tokens + new_tokens > config.block_size:
        raise GPT2LabError(f"--new-tokens {new_tokens} + a {prompt_tokens}-token prompt do not fit the model's "
                           f"context of {config.block_size}")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 50257, (prompt_tokens,), generator=g).tolist() for _ in range(clients)]
    limits = Limits(max_tokens=new_tokens, max_n=1, max_concurrent_requests=clients)
    with tempfile.TemporaryDirectory() as tmp:
        GPT(config).save_pretrained(tmp)
        serve_config = ServeConfig(models=[f"bench={tmp}"], port=0, device=str(device), dtype=dtype,
                                   batch_size=clients, limits=limits)
        with BackgroundServer(serve_config) as server:
            def complete(i: int, done: list) -> None:
                body = {"model": "bench", "prompt": prompts[i], "max_tokens": new_tokens, "top_k": 50, "seed": i}
                request = urllib.request.Request(server.url + "/v1/completions", data=json.dumps(body).encode(),
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=3600) as response:
                    done.append(json.loads(response.read())["usage"]["completion_tokens"])

            def sequential() -> int:
                done: list[int] = []
                for i in range(clients):
                    complete(i, done)
                return sum(done)

            def concurrent() -> int:
                done: list[int] = []
                threads = [threading.Thread(target=complete, args=(i, done)) for i in range(clients)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                if len(done) != clients:
                    raise RuntimeError(f"{clients - len(done)} of the concurrent requests failed")
                return sum(done)

            complete(0, [])  # warm-up: first-call allocations, thread pools
            runs = {"sequential": [], "concurrent": []}
            for _ in range(repeats):  # alternating, so that load from elsewhere hits both alike
                for name, fn in (("sequential", sequential), ("concurrent", concurrent)):
                    t0 = time.perf_counter()
                    tokens = fn()
                    runs[name].append((tokens / (time.perf_counter() - t0), tokens))
    rows = []
    for name, results in runs.items():
        rate = statistics.median(r for r, _ in results)
        tokens = statistics.median(t for _, t in results)
        at_once = clients if name == "concurrent" else 1
        # ms/iter: the time between two tokens of one request, as its client sees it
        rows.append(Row(f"serve {name}", dtype, at_once, rate, 1e3 * at_once / rate, None,
                        {"requests": clients, "tokens": tokens}))
    report = _report("serve", device, rows, {"config": asdict(config), "clients": clients, "new_tokens": new_tokens,
                                              "prompt_tokens": prompt_tokens})
    report["ratios"] = {f"serve concurrent / sequential ({clients} clients)": rows[1].tokens_per_s / rows[0].tokens_per_s}
    return report


# --------------------------------------------------------------------------------------------- report


def _report(mode: str, device, rows: list[Row], details: dict) -> dict:
    """Results plus ratios ours/theirs at the same batch size: same dtype, and against their float32."""
    ratios = {}
    for ours in (r for r in rows if r.impl == "gpt2lab"):
        for theirs in (r for r in rows if r.impl != "gpt2lab" and r.batch_size == ours.batch_size):
            if mode == "prepare" or theirs.dtype in (ours.dtype, "float32"):
                key = f"gpt2lab {ours.dtype} / {theirs.impl} {theirs.dtype} (batch {ours.batch_size})"
                ratios[key] = ours.tokens_per_s / theirs.tokens_per_s
    return {
        "mode": mode,
        "environment": environment(device),
        "details": details,
        "results": [asdict(r) for r in rows],
        "ratios": ratios,
    }


def format_table(report: dict) -> str:
    """A plain-text table of a report, for the terminal and the README."""
    header = f"{'impl':<13} {'dtype':<9} {'batch':>5} {'tokens/s':>10} {'ms/iter':>9} {'peak MB':>8}  notes"
    lines = [f"gpt2lab bench {report['mode']} on {report['environment']['device']} "
             f"({report['environment']['cpu_count']} cpus, torch {report['environment']['torch']})", header]
    for r in report["results"]:
        peak = f"{r['peak_mem_mb']:.0f}" if r["peak_mem_mb"] is not None else "-"
        notes = ", ".join(f"{k}={v:.3g}" for k, v in r["extra"].items())
        lines.append(
            f"{r['impl']:<13} {r['dtype']:<9} {r['batch_size']:>5} {r['tokens_per_s']:>10.1f} "
            f"{r['ms_per_iter']:>9.1f} {peak:>8}  {notes}"
        )
    for name, ratio in report["ratios"].items():
        lines.append(f"ratio {name}: {ratio:.2f}x")
    return "\n".join(lines)


def write_json(report: dict, path) -> None:
    from gpt2lab.storage.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
