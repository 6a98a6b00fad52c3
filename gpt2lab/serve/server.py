"""`gpt2lab serve`: load the models, bind the port, run the HTTP server (uvicorn) until Ctrl-C.

The order is chosen so that what the user got wrong fails fast, in one line: the models are resolved (a typo in
a path, a model not in the cache) and the port is bound (in use, not allowed) before any weights are loaded.
Binds 127.0.0.1 unless --host says otherwise: a model server is not something to open to a network by accident.
"""

from __future__ import annotations

import errno
import signal
import socket

from gpt2lab.errors import BadValue, GPT2LabError
from gpt2lab.serve.config import ServeConfig, parse_model_specs

# The serve extra: what `pip install 'gpt2lab[serve]'` brings. Imported only when serving.
SERVE_EXTRA = "pip install 'gpt2lab[serve]'"


def require_serve_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise GPT2LabError(f"gpt2lab serve needs FastAPI and uvicorn ({e.name} is missing): {SERVE_EXTRA}") from None


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a one-line error saying why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise BadValue("host", f"{host}: not an address of this machine ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out TIME_WAIT
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise GPT2LabError(f"port {port} on {host} is already in use (another server?); choose another "
                               f"with --port") from None
        if e.errno == errno.EACCES:
            raise GPT2LabError(f"not allowed to listen on port {port} (ports below 1024 need privileges); "
                               f"choose another with --port") from None
        raise GPT2LabError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock


def url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def load_models(specs: list[tuple[str, str]], config: ServeConfig, tokenizer, log) -> list:
    """Resolve every MODEL first (a bad one fails before any weights load), check they fit, then load them."""
    from gpt2lab.model.gpt import load_model
    from gpt2lab.runtime import memory
    from gpt2lab.runtime.device import decoding_dtype, keep_freed_memory, resolve_device
    from gpt2lab.sampling.texts import sampling_model_source
    from gpt2lab.serve.api import ServedModel
    from gpt2lab.serve.engine import Engine

    device = resolve_device(config.device)
    dtype = decoding_dtype(config.dtype, device)
    found = [(name, source, *sampling_model_source(source, tokenizer)) for name, source in specs]
    # Each model's KV cache holds its whole context for every row, allocated up front.
    needed = sum(memory.inference_bytes(arch, config.batch_size, arch.block_size, scored=1, cached=arch.block_size,
                                        bytes_per_value=dtype.itemsize) for *_, arch in found)
    memory.check_fits("batch_size", config.batch_size, needed, device, "for the models' KV caches")
    served = []
    for name, source, directory, arch in found:
        model = load_model(directory, device=device, dtype=dtype)
        engine = Engine(model, tokenizer, batch_size=config.batch_size)
        served.append(ServedModel(name, source, engine, arch.block_size))
        log(f"loaded {name} from {directory} ({model.num_parameters() / 1e6:.1f}M parameters, context "
            f"{arch.block_size}, {str(dtype).replace('torch.', '')} on {device})")
    if device.type == "cpu":
        keep_freed_memory()  # prefill buffers come and go every request: keep them instead of page-faulting
    return served


def _say(line: str) -> None:
    print(line, flush=True)  # at once, also into a pipe: a script waits for the URL line


def serve(config: ServeConfig, log=_say) -> int:
    require_serve_extra()
    import uvicorn

    from gpt2lab.serve.api import create_app
    from gpt2lab.serve.engine import Scheduler
    from gpt2lab.tokenizer import get_tokenizer

    config.check()
    specs = parse_model_specs(config.models)
    tokenizer = get_tokenizer()
    sock = bind(config.host, config.port)  # before the (slow) model loads: a busy port fails at once
    try:
        models = load_models(specs, config, tokenizer, log)
        scheduler = Scheduler([m.engine for m in models])
        scheduler.start()
        address = url(config.host, sock.getsockname()[1])  # --port 0: the port the OS chose

        def started():
            exposed = config.host not in ("127.0.0.1", "localhost", "::1")
            warning = " (reachable from other machines: there is no authentication)" if exposed else ""
            log(f"gpt2lab serve: playground at {address}/ , OpenAI API at {address}/v1{warning}; "
                f"models: {', '.join(m.id for m in models)}; Ctrl-C stops")

        app = create_app(models, scheduler, tokenizer, config.limits, on_startup=started)
        # A second Ctrl-C forces the exit; open streams get a few seconds to finish before that.
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=3))
        previous = signal.signal(signal.SIGTERM, _interrupt)  # uvicorn re-raises the signal after its shutdown
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
            scheduler.stop()
    finally:
        sock.close()
    log("gpt2lab serve: stopped")
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


class BackgroundServer:
    """A server in a thread of this process, on a loopback port of its own (port 0: a free one), for as long as
    the `with` block lasts: `gpt2lab bench serve` measures it, the tests drive it. `url`, `engines` (by model id)
    and `tokenizer` are set inside the block."""

    def __init__(self, config: ServeConfig):
        self.config = config

    def __enter__(self) -> BackgroundServer:
        require_serve_extra()
        import threading
        import time

        import uvicorn

        from gpt2lab.serve.api import create_app
        from gpt2lab.serve.engine import Scheduler
        from gpt2lab.tokenizer import get_tokenizer

        self.config.check()
        self.tokenizer = get_tokenizer()
        models = load_models(parse_model_specs(self.config.models), self.config, self.tokenizer, log=lambda _: None)
        self.engines = {m.id: m.engine for m in models}
        self.scheduler = Scheduler(list(self.engines.values()))
        self.scheduler.start()
        self.sock = bind(self.config.host, self.config.port)
        self.url = url(self.config.host, self.sock.getsockname()[1])
        app = create_app(models, self.scheduler, self.tokenizer, self.config.limits)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                self.__exit__()
                raise RuntimeError("the background server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.scheduler.stop()
        self.sock.close()
