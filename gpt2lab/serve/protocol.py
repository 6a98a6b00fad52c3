"""The OpenAI completions API as gpt2lab serves it: the request (checked by pydantic), the responses, the errors.

Requests are parsed strictly: a wrong type (`"max_tokens": "10"`, `"n": 2.5`) or an unknown field is refused
with a message naming the field, as OpenAI does, rather than guessed at. Fields of OpenAI's API that this server
does not implement (logprobs, penalties, logit_bias, suffix, best_of) are accepted only at their "off" values,
and refused otherwise: silently ignoring them would return text that is not what the client asked for.
`top_k` is an extension (as in vLLM and llama.cpp): 0, -1 or null mean no top-k.

Every error is an OpenAI error object, `{"error": {"message", "type", "param", "code"}}`, so that clients
(the `openai` package among them) report it as they report OpenAI's own.
"""

from __future__ import annotations

import time
import uuid

from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for the completions API
MAX_STOP_STRINGS = 4  # OpenAI's limit

PromptInput = str | list[str] | list[int] | list[list[int]]


class APIError(Exception):
    """A request the server refuses: an HTTP status and an OpenAI error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str
    prompt: PromptInput
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=-1)  # extension; 0, -1: no top-k
    n: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**64)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    echo: bool | None = False
    user: str | None = None
    # OpenAI fields accepted at their "off" values only (see the module docstring)
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    def stop_strings(self) -> tuple[str, ...]:
        return () if self.stop is None else (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def choices_per_prompt(self) -> int:
        return self.n or 1


_NOT_IMPLEMENTED = {  # field -> its values that mean "off"
    "logprobs": (None,), "best_of": (None, 1), "suffix": (None, ""), "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0), "logit_bias": (None, {}),
}
# Fields that take several shapes: pydantic says why each shape failed; say what the shapes are instead.
_SHAPES = {
    "prompt": "a string, a list of strings, a list of token ids, or a list of lists of token ids",
    "stop": "a string, a list of strings, or null",
}


def parse_completion_request(body) -> CompletionRequest:
    """A JSON value -> CompletionRequest, or a 400 APIError naming the field and what it should be."""
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    try:
        request = CompletionRequest.model_validate(body)
    except ValidationError as e:
        raise _field_error(e.errors()[0]) from None
    for name, off in _NOT_IMPLEMENTED.items():
        if getattr(request, name) not in off:
            raise APIError(400, f"{name} is not supported by gpt2lab serve; leave it out", param=name,
                           code="unsupported_parameter")
    stops = request.stop_strings()
    if len(stops) > MAX_STOP_STRINGS:
        raise APIError(400, f"stop holds {len(stops)} strings; at most {MAX_STOP_STRINGS}", param="stop")
    if any(not s for s in stops):
        raise APIError(400, "stop strings must not be empty", param="stop")
    return request


def _field_error(error: dict) -> APIError:
    loc = error["loc"]
    param = str(loc[0]) if loc else None
    if error["type"] == "extra_forbidden":
        return APIError(400, f"unrecognized request argument: {param}", param=param, code="unknown_parameter")
    if error["type"] == "missing":
        return APIError(400, f"{param} is required", param=param, code="missing_required_parameter")
    if param in _SHAPES:
        return APIError(400, f"{param} must be {_SHAPES[param]}", param=param)
    where = ".".join(str(part) for part in loc)
    value = repr(error.get("input"))
    value = value if len(value) <= 40 else value[:37] + "..."
    return APIError(400, f"{where}: {error['msg'][0].lower()}{error['msg'][1:]}, got {value}", param=param)


# --------------------------------------------------------------------------------------------- responses


def completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


def completion(id: str, model: str, texts: list[str], finish_reasons: list[str], usage: dict) -> dict:
    return {
        "id": id, "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"text": text, "index": i, "logprobs": None, "finish_reason": reason}
                    for i, (text, reason) in enumerate(zip(texts, finish_reasons))],
        "usage": usage,
    }


def chunk(id: str, model: str, index: int, text: str, finish_reason: str | None) -> dict:
    """One server-sent event of a streamed completion: new text of choice `index`."""
    return {"id": id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}]}


def usage_chunk(id: str, model: str, usage: dict) -> dict:
    """The last event of a stream when stream_options.include_usage is set: no choices, the token counts."""
    return {"id": id, "object": "text_completion", "created": int(time.time()), "model": model, "choices": [],
            "usage": usage}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
