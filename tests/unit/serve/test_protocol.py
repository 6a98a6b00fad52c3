"""The OpenAI completions API as gpt2lab serve speaks it (gpt2lab/serve/protocol.py): requests parsed strictly, each
refusal a 400 naming the field, OpenAI's "off" values of what it does not implement accepted, and the responses."""

import pytest

pytest.importorskip("pydantic", reason="gpt2lab serve needs the serve extra: pip install -e '.[serve]'")

from gpt2lab.serve.protocol import APIError, chunk, completion, parse_completion_request, usage  # noqa: E402


def refused(body) -> APIError:
    with pytest.raises(APIError) as error:
        parse_completion_request(body)
    assert error.value.status == 400
    return error.value


def test_a_request_is_parsed_with_its_stop_strings_and_choices():
    request = parse_completion_request({"model": "a", "prompt": ["Hi", "Yo"], "stop": "\n", "n": 2, "best_of": 1,
                                        "logprobs": None, "frequency_penalty": 0, "suffix": ""})
    assert (request.model, request.prompt, request.stop_strings(), request.choices_per_prompt()) == (
        "a", ["Hi", "Yo"], ("\n",), 2)
    plain = parse_completion_request({"model": "a", "prompt": [1, 2, 3]})
    assert (plain.prompt, plain.stop_strings(), plain.choices_per_prompt(), plain.max_tokens) == ([1, 2, 3], (), 1, None)
    assert parse_completion_request({"model": "a", "prompt": "x", "stop": ["a", "b"]}).stop_strings() == ("a", "b")


@pytest.mark.parametrize("body, message, param, code", [
    ([1, 2], "the request body must be a JSON object, got list", None, None),
    ({"prompt": "Hi"}, "model is required", "model", "missing_required_parameter"),
    ({"model": "a", "prompt": "Hi", "max_token": 5}, "unrecognized request argument: max_token", "max_token",
     "unknown_parameter"),
    ({"model": "a", "prompt": "Hi", "logprobs": 2}, "logprobs is not supported by gpt2lab serve; leave it out",
     "logprobs", "unsupported_parameter"),
    ({"model": "a", "prompt": "Hi", "best_of": 3}, "best_of is not supported", "best_of", "unsupported_parameter"),
    ({"model": "a", "prompt": 5}, "prompt must be a string, a list of strings, a list of token ids, or a list of "
     "lists of token ids", "prompt", None),
    ({"model": "a", "prompt": "Hi", "n": "2"}, "n: input should be a valid integer, got '2'", "n", None),
    ({"model": "a", "prompt": "Hi", "stop": ["a", "b", "c", "d", "e"]}, "stop holds 5 strings; at most 4", "stop",
     None),
    ({"model": "a", "prompt": "Hi", "stop": ["a", ""]}, "stop strings must not be empty", "stop", None),
], ids=["not-an-object", "no-model", "unknown-field", "logprobs", "best-of", "prompt-shape", "strict-types",
        "too-many-stops", "empty-stop"])
def test_a_bad_request_is_a_400_naming_the_field(body, message, param, code):
    error = refused(body)
    assert message in error.message and (error.param, error.code) == (param, code)
    assert error.body() == {"error": {"message": error.message, "type": "invalid_request_error", "param": param,
                                      "code": code}}


def test_responses_in_openai_s_shapes():
    counts = usage(3, 5)
    assert counts == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    done = completion("cmpl-1", "a", ["x", "y"], ["length", "stop"], counts)
    assert (done["object"], done["model"], done["usage"]) == ("text_completion", "a", counts)
    assert done["choices"] == [{"text": "x", "index": 0, "logprobs": None, "finish_reason": "length"},
                               {"text": "y", "index": 1, "logprobs": None, "finish_reason": "stop"}]
    assert chunk("cmpl-1", "a", 1, "z", None)["choices"] == [
        {"text": "z", "index": 1, "logprobs": None, "finish_reason": None}]
