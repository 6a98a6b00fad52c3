"""`gpt2lab bench serve` (gpt2lab/tools/bench/serve.py) up to the server: a size that cannot fit the model's context
is refused before anything starts, and one that fits asks for a server sized for the clients. (The benchmark with a
real server: tests/e2e/test_bench_serve.py.)"""

import pytest

from gpt2lab.errors import BadValue
from gpt2lab.serve import server
from gpt2lab.tools.bench import BENCH_CONFIGS, bench_serve


class Started(Exception):
    """Raised by the stand-in server: the benchmark got as far as starting one."""


@pytest.fixture
def servers(monkeypatch):
    """The configs servers were started with; none really starts."""
    started = []

    class NoServer:
        def __init__(self, config):
            started.append(config)

        def __enter__(self):
            raise Started

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(server, "BackgroundServer", NoServer)
    return started


def test_a_completion_longer_than_the_context_is_refused_before_a_server_starts(servers):
    tiny = BENCH_CONFIGS["tiny"]  # a 128-token context
    with pytest.raises(BadValue, match="113 \\+ a 16-token prompt do not fit the model's context of 128") as refused:
        bench_serve(tiny, clients=2, new_tokens=113, prompt_tokens=16)
    assert refused.value.param == "new_tokens" and servers == []


def test_a_size_that_fits_starts_one_server_sized_for_the_clients(servers):
    with pytest.raises(Started):
        bench_serve(BENCH_CONFIGS["tiny"], clients=3, new_tokens=112, prompt_tokens=16, dtype="float32")
    (config,) = servers
    assert (config.port, config.batch_size, config.dtype, config.models[0].split("=")[0]) == (0, 3, "float32", "bench")
    assert (config.limits.max_tokens, config.limits.max_n, config.limits.max_concurrent_requests) == (112, 1, 3)
