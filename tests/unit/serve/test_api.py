"""The checks of the HTTP side (gpt2lab/serve/api.py), without a server: prompts to token ids, each request's
settings within the limits and the model's context, an unknown model. (Over HTTP: tests/e2e/test_serve_api.py.)"""

import pytest

pytest.importorskip("fastapi", reason="gpt2lab serve needs the serve extra: pip install -e '.[serve]'")

from gpt2lab.serve import api  # noqa: E402
from gpt2lab.serve.config import Limits  # noqa: E402
from gpt2lab.serve.protocol import APIError, parse_completion_request  # noqa: E402
from gpt2lab.tokenizer import get_tokenizer  # noqa: E402

SERVED = api.ServedModel(id="a", source="runs/a", engine=None, block_size=128)


def refused(call, *args) -> APIError:
    with pytest.raises(APIError) as error:
        call(*args)
    return error.value


def test_prompts_become_token_ids_one_list_per_prompt():
    tok = get_tokenizer()
    assert api._tokenize_prompts("Hello", tok) == [tok.encode("Hello")]
    assert api._tokenize_prompts(["Hello", "Yo"], tok) == [tok.encode("Hello"), tok.encode("Yo")]
    assert api._tokenize_prompts([15496, 11], tok) == [[15496, 11]]  # token ids: one prompt
    assert api._tokenize_prompts([[15496], [11, 314]], tok) == [[15496], [11, 314]]
    assert api._tokenize_prompts("", tok) == [[tok.eot_token]]  # unconditional, as `gpt2lab sample` does


@pytest.mark.parametrize("prompt, message", [
    ([], "prompt is an empty list"),
    ([[]], "a prompt of token ids is empty; give at least one token (<|endoftext|> = 50256"),
    ([[1, 50257]], "token id 50257 is outside the vocabulary (0..50256)"),
    ([-1], "token id -1 is outside the vocabulary"),
])
def test_prompts_that_are_not_prompts_are_refused(prompt, message):
    error = refused(api._tokenize_prompts, prompt, get_tokenizer())
    assert error.status == 400 and error.param == "prompt" and message in error.message


def settings(body, prompts, limits=Limits()):
    return api._settings(parse_completion_request({"model": "a", "prompt": "x", **body}), prompts, SERVED, limits)


def test_a_request_s_settings_take_openai_s_defaults():
    s = settings({}, [[1, 2]])
    assert (s.max_tokens, s.temperature, s.top_k, s.top_p, s.stop) == (16, 1.0, None, None, ())
    s = settings({"max_tokens": 100, "temperature": 0, "top_k": 40, "top_p": 0.9, "stop": ["\n"]}, [[1, 2]])
    assert (s.max_tokens, s.temperature, s.top_k, s.top_p, s.stop) == (100, 0, 40, 0.9, ("\n",))
    assert settings({"top_k": 0}, [[1]]).top_k is None and settings({"top_k": -1}, [[1]]).top_k is None  # no top-k


@pytest.mark.parametrize("body, prompts, limits, message, param", [
    ({"n": 3}, [[1]] * 3, Limits(max_n=8), "asks for 9 completions (3 prompts x n=3); at most 8", "n"),
    ({"max_tokens": 257}, [[1]], Limits(), "max_tokens is 257, more than this server allows (256", "max_tokens"),
    ({}, [[1] * 128], Limits(), "the prompt is 128 tokens, more than this server allows (127", "prompt"),
    ({}, [[1] * 11], Limits(max_prompt_tokens=10), "the prompt is 11 tokens, more than this server allows (10",
     "prompt"),
    ({"max_tokens": 100}, [[1] * 29], Limits(), "maximum context length is 128 tokens, however you requested 129",
     "max_tokens"),
], ids=["completions", "max-tokens", "prompt-context", "prompt-limit", "context"])
def test_a_request_beyond_the_limits_or_the_context_is_refused(body, prompts, limits, message, param):
    error = refused(settings, body, prompts, limits)
    assert error.status == 400 and message in error.message and error.param == param


def test_the_longest_request_that_fits_is_accepted():
    assert settings({"max_tokens": 100}, [[1] * 28]).max_tokens == 100  # 28 + 100 = the context of 128
    assert settings({"n": 4}, [[1]] * 2, Limits(max_n=8)).max_tokens == 16  # 8 completions: the limit


def test_an_unknown_model_is_a_404_listing_the_models_served():
    error = refused(api._find, {"a": SERVED, "b": SERVED}, "gpt-4")
    assert (error.status, error.param, error.code) == (404, "model", "model_not_found")
    assert error.message == "the model 'gpt-4' does not exist; this server has: a, b"
    assert api._find({"a": SERVED}, "a") is SERVED
