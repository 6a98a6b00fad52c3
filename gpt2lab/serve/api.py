"""The HTTP side of `gpt2lab serve` (FastAPI): the OpenAI completions API, the health check and the playground.

    GET  /                 the playground page (playground.html, shipped in the package)
    GET  /health           {"status": "ok", ...}: models, requests in flight, rows running, limits
    GET  /v1/models        the models served, OpenAI's list format (plus `root`: the MODEL as given)
    POST /v1/completions   OpenAI's completions, plain or streamed as server-sent events ending in [DONE]
    GET  /openapi.json     the OpenAPI schema: the request's fields (as protocol.py parses them), models, limits

A request is checked completely before it takes any resource: body size, JSON, fields (protocol.py), model,
prompt and token limits, then the limit on requests in flight. What fails is a 4xx with an OpenAI error object,
never a 500 or a traceback. An accepted request becomes one `Sequence` per prompt and choice, handed to the
engine thread (engine.py); their events come back through an asyncio queue. A client that goes away (a closed
stream, or a plain request's connection) cancels its sequences, which frees their rows at the engine's next
step, and its place among the requests in flight at once.
"""

from __future__ import annotations

import asyncio
import copy
import json
import sys
import traceback
from dataclasses import asdict, dataclass
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from gpt2lab.sampling.decode import SamplingError, check_sampling_settings, sample_seed
from gpt2lab.serve import protocol
from gpt2lab.serve.config import Limits
from gpt2lab.serve.engine import Engine, Event, Scheduler, Sequence, Settings
from gpt2lab.serve.protocol import APIError, CompletionRequest


@dataclass
class ServedModel:
    id: str  # the name clients ask for
    source: str  # the MODEL it was loaded from, as given (what `gpt2lab sample` takes)
    engine: Engine
    block_size: int


def create_app(models: list[ServedModel], scheduler: Scheduler, tokenizer, limits: Limits,
               on_startup=None) -> FastAPI:
    """The application; on_startup() runs once the server accepts connections (the CLI prints its URL there)."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        if on_startup is not None:
            on_startup()
        yield

    # No /docs: FastAPI's docs pages load their scripts from a CDN, and this server must work offline. The OpenAPI
    # schema is served (/openapi.json): clients and API fuzzers read the request's fields from it.
    app = FastAPI(title="gpt2lab serve", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.openapi = lambda: _openapi(app, [m.id for m in models], limits, tokenizer)
    by_id = {m.id: m for m in models}
    in_flight = Counter()

    @app.exception_handler(APIError)
    async def api_error(request, error: APIError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, error: StarletteHTTPException):  # unknown path, wrong method
        message = {404: f"no such endpoint: {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(error.status_code, str(error.detail))
        return JSONResponse(APIError(error.status_code, message).body(), status_code=error.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request, error: Exception):  # a bug: say so without a traceback, log it here
        traceback.print_exception(error, file=sys.stderr)
        body = APIError(500, "internal server error (logged by the server)", type="server_error").body()
        return JSONResponse(body, status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def playground():
        return HTMLResponse(resources.files("gpt2lab.serve").joinpath("playground.html").read_text("utf-8"))

    @app.get("/health")
    async def health():
        return {
            "status": "ok", "models": list(by_id), "requests_in_flight": in_flight.value,
            "sequences_running": sum(len(m.engine.running) for m in models),
            "sequences_waiting": sum(len(m.engine.waiting) for m in models),
            "limits": asdict(limits),
        }

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [_model_card(m) for m in models]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        return _model_card(_find(by_id, model_id))

    @app.post("/v1/completions", openapi_extra=_REQUEST_BODY)
    async def completions(request: Request):
        body = await _read_json(request, limits.max_body_bytes)
        req = protocol.parse_completion_request(body)
        served = _find(by_id, req.model)
        _check_completions(len(_prompt_list(req.prompt)), req, limits)  # before tokenizing 100,000 prompts
        prompts = _tokenize_prompts(req.prompt, tokenizer)
        settings = _settings(req, prompts, served, limits)
        if in_flight.value >= limits.max_concurrent_requests:
            raise APIError(429, f"the server is busy: {in_flight.value} requests in flight, its limit "
                           f"(--max-concurrent-requests); retry shortly", code="too_many_requests",
                           type="rate_limit_error")
        generation = Generation(request, served, req, prompts, settings, tokenizer, scheduler, in_flight)
        if req.stream:
            return CompletionStream(generation)
        return JSONResponse(await generation.collect())

    return app


# The body is parsed by hand (protocol.parse_completion_request, for OpenAI's error messages), so FastAPI does not
# know its fields: they are declared here, from the pydantic model that parses them.
_BODY_SCHEMA = protocol.CompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
_REQUEST_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {k: v for k, v in _BODY_SCHEMA.items() if k != "$defs"}}}}}


def _openapi(app: FastAPI, model_ids: list[str], limits: Limits, tokenizer) -> dict:
    """FastAPI's schema of the routes, with the completion request's fields, the models this server has, and the
    limits it enforces (what is refused anyway, parse_completion_request and _settings decide)."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        # a copy: the request body in it is _REQUEST_BODY's own dict, shared by every app
        schema = copy.deepcopy(get_openapi(title=app.title, version=app.version, routes=app.routes))
        schema.setdefault("components", {}).setdefault("schemas", {}).update(_BODY_SCHEMA.get("$defs", {}))
        body = schema["paths"]["/v1/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        fields = body["properties"]
        fields["model"]["enum"] = model_ids
        fields["max_tokens"]["anyOf"][0]["maximum"] = limits.max_tokens
        fields["n"]["anyOf"][0]["maximum"] = limits.max_n
        token_id = {"type": "integer", "minimum": 0, "maximum": tokenizer.n_vocab - 1}
        for shape in fields["prompt"]["anyOf"]:  # a list of token ids, a list of lists of them
            if shape.get("items", {}).get("type") == "integer":
                shape["items"] = token_id
            elif shape.get("items", {}).get("items", {}).get("type") == "integer":
                shape["items"]["items"] = token_id
        app.openapi_schema = schema
    return app.openapi_schema


class Counter:
    """Requests in flight. Only the event loop's thread touches it: no lock needed."""

    def __init__(self):
        self.value = 0


def _model_card(m: ServedModel) -> dict:
    return {"id": m.id, "object": "model", "created": 0, "owned_by": "gpt2lab", "root": m.source,
            "max_model_len": m.block_size}


def _find(by_id: dict, model_id: str) -> ServedModel:
    if model_id not in by_id:
        raise APIError(404, f"the model {model_id!r} does not exist; this server has: {', '.join(by_id)}",
                       param="model", code="model_not_found")
    return by_id[model_id]


async def _read_json(request: Request, max_bytes: int):
    """The body as JSON, refused (413) once it passes max_bytes, whether or not Content-Length says so."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(int(declared), max_bytes)
    body = bytearray()
    try:
        async for part in request.stream():
            body += part
            if len(body) > max_bytes:
                raise _too_large(len(body), max_bytes)
    except ClientDisconnect:  # gone before the whole body came: nobody reads the answer; no traceback in the log
        raise APIError(400, "the client closed the connection before sending the whole body") from None
    try:
        value = json.loads(body)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise APIError(400, f"the request body is not valid JSON: {e}") from None
    except RecursionError:  # "[[[[..." nested deeper than Python's decoder recurses
        raise APIError(400, "the request body is not valid JSON here: nested too deeply") from None
    _check_unicode(value)
    return value


def _check_unicode(value) -> None:
    """Refuse strings holding a lone surrogate ("\\ud800" is valid JSON, but no UTF-8 text): echoed back or named
    in an error they could not be encoded. Iterative: the value may nest as deep as the decoder allowed."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise APIError(400, "the request body holds a string that is not valid Unicode (a lone surrogate "
                               "such as \\ud800)") from None


def _too_large(size: int, max_bytes: int) -> APIError:
    return APIError(413, f"the request body is over {max_bytes:,} bytes (got {size:,} so far; "
                    f"--max-body-bytes)", code="request_too_large")


def _prompt_list(prompt) -> list:
    """The request's prompt as a list of prompts (a string, or a list of token ids, is one prompt)."""
    return [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) else prompt


def _tokenize_prompts(prompt, tokenizer) -> list[list[int]]:
    """Token ids of each prompt. An empty string samples unconditionally (from <|endoftext|>), as in
    `gpt2lab sample`; token ids must be ones the tokenizer knows."""
    prompt = _prompt_list(prompt)
    if not prompt:
        raise APIError(400, "prompt is an empty list; give at least one prompt", param="prompt")
    prompts = []
    for p in prompt:
        if isinstance(p, str):
            prompts.append(tokenizer.encode(p) or [tokenizer.eot_token])
            continue
        if not p:
            raise APIError(400, "a prompt of token ids is empty; give at least one token "
                           f"(<|endoftext|> = {tokenizer.eot_token} for an unconditional sample)", param="prompt")
        bad = next((t for t in p if not 0 <= t < tokenizer.n_vocab), None)
        if bad is not None:
            raise APIError(400, f"token id {bad} is outside the vocabulary (0..{tokenizer.n_vocab - 1})",
                           param="prompt")
        prompts.append(list(p))
    return prompts


def _check_completions(prompt_count: int, req: CompletionRequest, limits: Limits) -> None:
    completions = prompt_count * req.choices_per_prompt()
    if completions > limits.max_n:
        raise APIError(400, f"this request asks for {completions} completions ({prompt_count} prompts x n="
                       f"{req.choices_per_prompt()}); at most {limits.max_n} per request (--max-n)", param="n")


def _settings(req: CompletionRequest, prompts: list[list[int]], served: ServedModel, limits: Limits) -> Settings:
    """The request's sampling settings, once its sizes are within the limits and the model's context."""
    _check_completions(len(prompts), req, limits)
    # Left out: OpenAI's default, unless this server allows fewer (a request that sets nothing is not refused)
    max_tokens = min(protocol.DEFAULT_MAX_TOKENS, limits.max_tokens) if req.max_tokens is None else req.max_tokens
    if max_tokens > limits.max_tokens:
        raise APIError(400, f"max_tokens is {max_tokens}, more than this server allows ({limits.max_tokens}; "
                       f"--max-tokens)", param="max_tokens")
    longest = max(len(p) for p in prompts)
    max_prompt = limits.max_prompt_tokens or served.block_size - 1
    if longest > max_prompt:
        raise APIError(400, f"the prompt is {longest} tokens, more than this server allows ({max_prompt}; "
                       f"--max-prompt-tokens)", param="prompt", code="context_length_exceeded")
    if longest + max_tokens > served.block_size:
        raise APIError(400, f"this model's maximum context length is {served.block_size} tokens, however you "
                       f"requested {longest + max_tokens} tokens ({longest} in your prompt; {max_tokens} for the "
                       f"completion); reduce your prompt or max_tokens", param="max_tokens",
                       code="context_length_exceeded")
    top_k = req.top_k if req.top_k is not None and req.top_k > 0 else None  # 0, -1: no top-k (protocol.py)
    temperature = 1.0 if req.temperature is None else req.temperature
    try:  # the checks of `gpt2lab sample`: a temperature too small to divide by (1e-300) is refused here
        check_sampling_settings(max_tokens, temperature, top_k, req.top_p)
    except SamplingError as e:
        raise APIError(400, f"{e.param} {e.problem}", param=e.param) from None
    return Settings(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=req.top_p,
                    stop=req.stop_strings())


class Generation:
    """One accepted request: its sequences in the engine, their events, and the client it answers."""

    def __init__(self, request: Request, served: ServedModel, req: CompletionRequest, prompts, settings: Settings,
                 tokenizer, scheduler: Scheduler, in_flight: Counter):
        self.request, self.served, self.req, self.prompts = request, served, req, prompts
        self.scheduler, self.in_flight = scheduler, in_flight
        self.id = protocol.completion_id()
        self.events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        deliver = _deliverer(asyncio.get_running_loop(), self.events)
        n = req.choices_per_prompt()
        # Choice j of each prompt has seed sample_seed(seed, j): `gpt2lab sample --seed S` sample j + 1.
        self.sequences = [
            Sequence(prompt, settings, None if req.seed is None else sample_seed(req.seed, j), tokenizer,
                     lambda event, i=i * n + j: deliver((i, event)))
            for i, prompt in enumerate(prompts) for j in range(n)
        ]
        # echo: each choice starts with its prompt (as given, or decoded from token ids)
        self.echoes = [self._echo(req.prompt, i // n, tokenizer) if req.echo else "" for i in range(len(self.sequences))]
        self.in_flight.value += 1
        self.released = False
        scheduler.submit(served.engine, self.sequences)

    def release(self) -> None:
        """Done or abandoned: the unfinished sequences stop, the request leaves the count in flight."""
        if not self.released:
            self.released = True
            self.in_flight.value -= 1
            self.scheduler.cancel([s for s in self.sequences if s.finish_reason is None])

    def usage(self) -> dict:
        # OpenAI counts each prompt once, however many choices it has
        return protocol.usage(sum(len(p) for p in self.prompts), sum(s.generated for s in self.sequences))

    async def collect(self) -> dict:
        """The whole completion, unless the client goes away first."""
        try:
            texts = list(self.echoes)
            reasons: list[str | None] = [None] * len(self.sequences)
            waiting = asyncio.ensure_future(_disconnected(self.request))
            try:
                while None in reasons:
                    get = asyncio.ensure_future(self.events.get())
                    await asyncio.wait({get, waiting}, return_when=asyncio.FIRST_COMPLETED)
                    if not get.done():
                        get.cancel()
                        return {}  # the client is gone: nobody reads this
                    index, event = get.result()
                    if event.finish_reason == "error":
                        raise APIError(500, event.text, type="server_error")
                    texts[index] += event.text
                    reasons[index] = event.finish_reason
            finally:
                waiting.cancel()
            return protocol.completion(self.id, self.served.id, texts, reasons, self.usage())
        finally:
            self.release()

    async def stream(self):
        """Server-sent events: each piece of text as it is generated, then [DONE]."""
        for index, echo in enumerate(self.echoes):
            if echo:
                yield _sse(protocol.chunk(self.id, self.served.id, index, echo, None))
        remaining = len(self.sequences)
        while remaining:
            index, event = await self.events.get()
            if event.finish_reason == "error":
                yield _sse(APIError(500, event.text, type="server_error").body())
                break
            yield _sse(protocol.chunk(self.id, self.served.id, index, event.text, event.finish_reason))
            remaining -= event.finish_reason is not None
        if self.req.stream_options is not None and self.req.stream_options.include_usage:
            yield _sse(protocol.usage_chunk(self.id, self.served.id, self.usage()))
        yield "data: [DONE]\n\n"

    @staticmethod
    def _echo(prompt, index: int, tokenizer) -> str:
        given = _prompt_list(prompt)[index]
        return given if isinstance(given, str) else tokenizer.decode(given)


class CompletionStream(StreamingResponse):
    """A streamed completion that releases its request however the response ends: finished, or cut off by
    the client (Starlette then cancels the stream, and the generator's own clean-up may never run)."""

    def __init__(self, generation: Generation):
        super().__init__(generation.stream(), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.generation = generation

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.generation.release()


def _deliverer(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue):
    """A function the engine thread calls to put an item on `queue`, which belongs to the event loop's thread."""

    def deliver(item) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop has closed (the server is shutting down): nobody is listening
            pass

    return deliver


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


async def _disconnected(request: Request) -> None:
    """Returns when the client closes its connection (the body has been read: what comes next is that)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
