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
    assert settings({}, [[1]], Limits(max_tokens=8)).max_tokens == 8  # the default, within a lower --max-tokens


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


# --------------------------------------------------------------------------------------------- over HTTP, in-process
# A real server (tests/serve_utils.py) on loopback with a tiny model: what a client sends, whole, and what comes back.


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from tests.conftest import tiny_gpt
    from tests.serve_utils import LiveServer

    directory = tmp_path_factory.mktemp("serve-api") / "a"
    tiny_gpt(vocab_size=50257, block_size=128).save_pretrained(directory)
    with LiveServer([f"a={directory}"]) as server:
        yield server


def completion(live, **fields) -> tuple[int, dict]:
    return live.post("/v1/completions", {"model": "a", "prompt": "Hello there", **fields})


@pytest.mark.parametrize("raw, shown", [
    (b"1e-300", "1e-300"),  # 0 in float32: the sampler would divide by zero (NaN probabilities)
    (b"5e-324", "5e-324"),  # the smallest sub-normal double
    (b"1e-39", "1e-39"),  # a sub-normal float32
    (b"1.1e-38", "1.1e-38"),  # just under float32's smallest normal number, the floor
])
def test_a_temperature_too_small_to_divide_by_is_a_400_before_it_joins_the_batch(live, raw, shown):
    body = b'{"model": "a", "prompt": "Hi", "max_tokens": 2, "temperature": %s}' % raw
    status, answer = live.post("/v1/completions", body)
    assert status == 400 and answer["error"]["param"] == "temperature", answer
    assert answer["error"]["message"] == f"temperature must be 0 (greedy) or at least 1.18e-38, got {shown}"
    assert live.wait_until_idle()["sequences_running"] == 0


@pytest.mark.parametrize("raw", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"1e39"])  # 1e39: inf in float32
def test_a_non_finite_temperature_is_a_400(live, raw):
    status, answer = live.post("/v1/completions", b'{"model": "a", "prompt": "Hi", "temperature": %s}' % raw)
    assert status == 400 and answer["error"]["param"] == "temperature", answer


def test_the_smallest_temperature_allowed_samples_as_greedy_does(live):
    """At the documented floor (float32's smallest normal number) the scaled logits still make a distribution:
    all of it on the largest logit, so the text is the greedy one, whatever the seed."""
    from gpt2lab.sampling.decode import MIN_TEMPERATURE

    _, greedy = completion(live, max_tokens=12, temperature=0)
    for seed in (1, 2):
        status, floor = completion(live, max_tokens=12, temperature=MIN_TEMPERATURE, seed=seed)
        assert status == 200 and floor["choices"][0]["text"] == greedy["choices"][0]["text"]


@pytest.mark.parametrize("top_k", [0, -1, None])
def test_top_k_0_and_minus_1_mean_no_top_k_as_documented(live, top_k):
    status, answer = completion(live, max_tokens=12, seed=5, top_k=top_k)
    _, plain = completion(live, max_tokens=12, seed=5)
    assert status == 200 and answer["choices"][0]["text"] == plain["choices"][0]["text"]
    _, top_1 = completion(live, max_tokens=12, seed=5, top_k=1)  # a top-k that does act: another text
    assert top_1["choices"][0]["text"] != plain["choices"][0]["text"]


def test_a_request_that_exactly_fills_the_context_is_accepted_and_one_token_more_is_refused_consistently(live):
    prompt = list(range(1000, 1028))  # 28 tokens + 100 = 128, the model's context
    status, answer = live.post("/v1/completions", {"model": "a", "prompt": prompt, "max_tokens": 100, "seed": 3,
                                                   "temperature": 0.5})
    assert status == 200, answer
    assert answer["usage"] == {"prompt_tokens": 28, "completion_tokens": 100, "total_tokens": 128}
    status, answer = live.post("/v1/completions", {"model": "a", "prompt": [*prompt, 7], "max_tokens": 100})
    assert status == 400 and answer["error"]["code"] == "context_length_exceeded"
    assert answer["error"]["message"] == ("this model's maximum context length is 128 tokens, however you requested "
                                          "129 tokens (29 in your prompt; 100 for the completion); reduce your "
                                          "prompt or max_tokens")
    status, answer = live.post("/v1/completions", {"model": "a", "prompt": list(range(127)), "max_tokens": 1})
    assert status == 200 and answer["usage"]["total_tokens"] == 128  # the longest prompt allowed, filled


@pytest.mark.parametrize("body, words", [
    (b"[" * 100_000, "nested too deeply"),  # Python's decoder recurses: RecursionError
    (b'{"model": "a", "prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
    (b'{"model": "\\ud800", "prompt": "Hi"}', "not valid Unicode"),  # would be named in the 404, unencodable
    (b'{"model": "a", "prompt": "\\udfff", "echo": true}', "not valid Unicode"),  # would be echoed
])
def test_hostile_bodies_are_a_400_and_no_traceback_reaches_the_log(live, capfd, body, words):
    status, answer = live.post("/v1/completions", body)
    assert status == 400 and words in answer["error"]["message"], answer
    assert completion(live, max_tokens=2)[0] == 200  # still serving
    assert "Traceback" not in capfd.readouterr().err


def test_too_many_prompts_are_refused_before_any_is_tokenized(live, monkeypatch):
    """100,000 prompts in a 1 MiB body: the count is refused first (tokenizing them would hold the event loop)."""
    monkeypatch.setattr(live.tokenizer, "encode", lambda text: pytest.fail("a prompt was tokenized"))
    status, answer = live.post("/v1/completions", {"model": "a", "prompt": ["Hi"] * 100_000})
    assert status == 400 and "asks for 100000 completions (100000 prompts x n=1)" in answer["error"]["message"]


def test_a_client_that_leaves_before_its_whole_body_is_a_400_not_a_logged_500():
    """Content-Length promised 100 bytes, then the connection closed: a client's doing, not a server bug (the
    500 handler would print a traceback)."""
    import asyncio

    from starlette.requests import Request

    async def receive():
        return {"type": "http.disconnect"}

    async def read():
        scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": [(b"content-length", b"100")]}
        await api._read_json(Request(scope, receive), 1000)

    with pytest.raises(APIError) as error:
        asyncio.run(read())
    assert error.value.status == 400 and "closed the connection" in error.value.message


def test_a_client_s_mistakes_leave_no_traceback_in_the_log(live, capfd):
    for body in ({"model": "a", "prompt": "Hi", "temperature": 1e-300}, {"model": "a", "prompt": "Hi", "top_k": 0},
                 {"model": "zzz", "prompt": "Hi"}, {"model": "a", "prompt": [99999]}, [1, 2]):
        assert live.post("/v1/completions", body)[0] in (200, 400, 404)
    assert live.post("/v1/completions", b"{oops")[0] == 400
    err = capfd.readouterr().err
    assert "Traceback" not in err and "sampling failed" not in err


def test_a_request_whose_row_fails_gets_a_500_and_a_stream_sharing_its_steps_is_untouched(tmp_path):
    """The issue's case over HTTP: a half-done stream and another client's request decoded in the same steps; the
    other's row turns NaN (forced here: the API refuses the values that did it). It alone fails; the stream ends as
    it would have alone, text for text."""
    import http.client
    import json
    import threading

    from tests.conftest import tiny_gpt
    from tests.serve_utils import LiveServer, StepGate

    tiny_gpt(vocab_size=50257, block_size=128).save_pretrained(tmp_path / "a")
    stream_body = {"model": "a", "prompt": "Once upon a time", "max_tokens": 30, "seed": 1, "stream": True}
    with LiveServer([f"a={tmp_path / 'a'}"]) as live:
        engine = live.engines["a"]
        real_logits = engine._logits

        def nan_for_the_victim(hidden):
            logits = real_logits(hidden)
            for row, seq in enumerate(engine.running[len(engine.running) - logits.size(0):]):
                if seq.prompt == [7, 7, 7]:
                    logits[row] = float("nan")
            return logits

        engine._logits = nan_for_the_victim
        gate = StepGate(engine)
        host, port = live.url.removeprefix("http://").split(":")
        stream = http.client.HTTPConnection(host, int(port), timeout=60)
        stream.request("POST", "/v1/completions", body=json.dumps(stream_body),
                       headers={"Content-Type": "application/json"})
        response = stream.getresponse()
        gate.allow(1)  # the stream's prefill: it is generating
        first = response.read1(65536)
        victim = {}
        thread = threading.Thread(target=lambda: victim.update(answer=live.post(
            "/v1/completions", {"model": "a", "prompt": [7, 7, 7], "max_tokens": 20})))
        thread.start()
        live._wait_for(lambda health: health["sequences_waiting"] == 1, timeout=30)  # it joins at the next step
        gate.open()
        streamed = (first + response.read()).decode()
        stream.close()
        thread.join(timeout=60)
        events = [json.loads(line[6:]) for line in streamed.split("\n\n") if line.startswith("data: {")]
        assert not any("error" in e for e in events) and events[-1]["choices"][0]["finish_reason"] == "length"
        status, answer = victim["answer"]
        assert status == 500 and answer["error"]["type"] == "server_error"
        assert answer["error"]["message"].startswith("sampling failed for this completion: its logits are not finite")
        text = "".join(e["choices"][0]["text"] for e in events)
        _, alone = live.post("/v1/completions", {**stream_body, "stream": False})
        assert text == alone["choices"][0]["text"]
        live.wait_until_idle()
