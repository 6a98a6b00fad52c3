"""`gpt2lab serve` fuzzed from its own OpenAPI schema (/openapi.json, which declares the completion request's
fields): schemathesis generates requests that follow the schema and requests that break it (wrong types, values
out of range, missing fields), and drives them against a real server on loopback. Whatever comes, the answer is
never a 5xx, a 4xx is an OpenAI error object, and the server is alive and idle afterwards.

Bounded by count, not by time: a fixed number of examples (derandomized: the same ones every run, so a failure
reproduces), and limits that make any accepted request cheap (8 tokens, 2 completions). No hypothesis deadline:
on a loaded CPU it would fail on slowness rather than on a fault (a request that hangs hits the client timeout)."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="gpt2lab serve needs the serve extra: pip install -e '.[serve]'")
schemathesis = pytest.importorskip("schemathesis", reason="the fuzz test needs schemathesis (test extra)")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402

from gpt2lab.serve.config import Limits  # noqa: E402
from tests.conftest import tiny_gpt  # noqa: E402
from tests.serve_utils import LiveServer  # noqa: E402

EXAMPLES = {("POST", "/v1/completions"): 60, ("GET", "/v1/models"): 1, ("GET", "/v1/models/{model_id}"): 15}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    directory = tmp_path_factory.mktemp("serve-fuzz") / "a"
    # a padded vocabulary, as gpt2lab train makes: 47 ids the sampler must exclude (-inf logits)
    tiny_gpt(vocab_size=50304, block_size=64).save_pretrained(directory)
    with LiveServer([f"a={directory}"], limits=Limits(max_tokens=8, max_n=2)) as server:
        yield server


@pytest.mark.parametrize("method, path", list(EXAMPLES))
def test_requests_generated_from_the_openapi_schema_never_get_a_5xx(live, method, path):
    schema = schemathesis.openapi.from_url(live.url + "/openapi.json")
    operation = schema[path][method]
    cases = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(GenerationMode.NEGATIVE)
    answered = []

    @given(case=cases)
    @settings(max_examples=EXAMPLES[method, path], deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def request_is_answered(case):
        response = case.call(base_url=live.url, timeout=60)
        assert response.status_code < 500, (case.as_curl_command(), response.status_code, response.text[:500])
        if response.status_code >= 400:
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"]
        # a streamed completion is a 200 before it runs: a fault shows as an error event in it
        assert 'data: {"error"' not in response.text, (case.as_curl_command(), response.text)
        answered.append(response.status_code)

    request_is_answered()
    if path == "/v1/completions":  # both kinds reached the server: completions accepted, and refusals
        assert 200 in answered and 400 in answered
    health = live.wait_until_idle()
    assert health["status"] == "ok"
