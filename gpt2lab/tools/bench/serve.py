"""`gpt2lab bench serve`: aggregate tokens/s of N concurrent clients of `gpt2lab serve` against the same requests
one after another, over HTTP."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import asdict

import torch

from gpt2lab.errors import BadValue
from gpt2lab.model.config import GPTConfig
from gpt2lab.model.gpt import GPT
from gpt2lab.tools.bench.common import Row, report


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
        raise BadValue("new_tokens", f"{new_tokens} + a {prompt_tokens}-token prompt do not fit the model's "
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
    result = report("serve", device, rows, {"config": asdict(config), "clients": clients, "new_tokens": new_tokens,
                                              "prompt_tokens": prompt_tokens})
    result["ratios"] = {f"serve concurrent / sequential ({clients} clients)": rows[1].tokens_per_s / rows[0].tokens_per_s}
    return result

