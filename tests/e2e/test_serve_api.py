"""`gpt2lab serve`'s HTTP API driven by real clients on loopback: the official `openai` package (plain,
streamed, same seed -> same text, errors), raw HTTP for bad input, a bounded concurrent load, the limits, and a
client that goes away. The server is real (uvicorn, FastAPI, the engine thread) with tiny random models."""

from __future__ import annotations

import http.client
import json
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="gpt2lab serve needs the serve extra: pip install -e '.[serve]'")
openai = pytest.importorskip("openai", reason="the tests drive the server with the openai package (test extra)")

from gpt2lab.cli import main  # noqa: E402
from gpt2lab.serve.config import Limits  # noqa: E402
from tests.conftest import tiny_gpt  # noqa: E402
from tests.serve_utils import LiveServer, StepGate  # noqa: E402


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-models")
    dirs = {}
    for name, seed in (("a", 0), ("b", 1)):
        dirs[name] = root / name
        tiny_gpt(seed=seed, vocab_size=50257, block_size=128).save_pretrained(dirs[name])
    return dirs


@pytest.fixture(scope="module")
def live(model_dirs):
    with LiveServer([f"a={model_dirs['a']}", f"b={model_dirs['b']}"]) as server:
        yield server


@pytest.fixture
def client(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key="not-needed", max_retries=0, timeout=60)


def streamed(client, **kwargs) -> tuple[dict[int, str], dict[int, str], list]:
    """Texts and finish reasons by choice index, from a streamed completion; and the chunks."""
    texts, reasons, chunks = {}, {}, []
    for chunk in client.completions.create(stream=True, **kwargs):
        chunks.append(chunk)
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.finish_reason:
                reasons[choice.index] = choice.finish_reason
    return texts, reasons, chunks


# --------------------------------------------------------------------------------------------- the openai client


def test_openai_client_plain_and_streamed_give_the_same_text_for_a_seed(client, live):
    settings = dict(model="a", prompt="Hello, I'm a language model,", max_tokens=24, seed=7, extra_body={"top_k": 40})
    plain = client.completions.create(**settings)
    assert plain.object == "text_completion" and plain.model == "a" and len(plain.choices) == 1
    choice = plain.choices[0]
    assert choice.finish_reason == "length" and choice.text
    prompt_tokens = len(live.tokenizer.encode(settings["prompt"]))
    assert plain.usage.prompt_tokens == prompt_tokens and plain.usage.completion_tokens == 24
    assert plain.usage.total_tokens == prompt_tokens + 24
    assert len(live.tokenizer.encode(choice.text)) in range(20, 29)  # 24 tokens of text (re-encoding may merge)

    texts, reasons, chunks = streamed(client, **settings)
    assert texts == {0: choice.text} and reasons == {0: "length"}
    assert len(chunks) > 5  # it came in pieces, as generated
    assert client.completions.create(**settings).choices[0].text == choice.text
    assert client.completions.create(**{**settings, "seed": 8}).choices[0].text != choice.text


def test_same_text_as_gpt2lab_sample_with_that_seed(client, model_dirs, capsys):
    prompt = "The meaning of life is"
    served = client.completions.create(model="b", prompt=prompt, max_tokens=30, seed=11, temperature=0.9,
                                       top_p=0.95, n=3, extra_body={"top_k": 50})
    base = ["sample", str(model_dirs["b"]), "--prompt", prompt, "--max-new-tokens", "30", "--seed", "11",
            "--temperature", "0.9", "--top-p", "0.95", "--top-k", "50"]
    assert main([*base, "--num-samples", "1"]) == 0
    assert capsys.readouterr().out == prompt + served.choices[0].text + "\n"
    assert main([*base, "--num-samples", "3"]) == 0  # choice i is sample i + 1
    out = capsys.readouterr().out
    for i, choice in enumerate(served.choices):
        assert f"sample {i + 1} of 3 {'-' * 20}\n{prompt}{choice.text}\n" in out


def test_models_and_health(client, live, model_dirs):
    assert [(m.id, m.owned_by) for m in client.models.list().data] == [("a", "gpt2lab"), ("b", "gpt2lab")]
    status, card = live.get("/v1/models/b")
    assert status == 200 and card["root"] == str(model_dirs["b"]) and card["max_model_len"] == 128
    status, health = live.get("/health")
    assert status == 200 and health["status"] == "ok" and health["models"] == ["a", "b"]
    assert health["limits"]["max_tokens"] == 256


def test_n_prompt_lists_echo_and_token_prompts(client, live):
    prompts = ["Once upon a time", "In the beginning"]
    both = client.completions.create(model="a", prompt=prompts, n=2, max_tokens=8, seed=3)
    assert [c.index for c in both.choices] == [0, 1, 2, 3]
    assert both.usage.prompt_tokens == sum(len(live.tokenizer.encode(p)) for p in prompts)  # once per prompt
    assert both.usage.completion_tokens == 4 * 8
    # choice j of each prompt is what that prompt alone gives for choice j
    alone = client.completions.create(model="a", prompt=prompts[1], n=2, max_tokens=8, seed=3)
    assert [c.text for c in both.choices[2:]] == [c.text for c in alone.choices]
    assert both.choices[0].text != both.choices[1].text
    ids = client.completions.create(model="a", prompt=live.tokenizer.encode(prompts[1]), n=2, max_tokens=8, seed=3)
    assert [c.text for c in ids.choices] == [c.text for c in alone.choices]
    echoed = client.completions.create(model="a", prompt=prompts[1], max_tokens=8, seed=3, echo=True)
    assert echoed.choices[0].text == prompts[1] + alone.choices[0].text
    unconditional = client.completions.create(model="a", prompt="", max_tokens=5, seed=3)
    assert unconditional.usage.prompt_tokens == 1 and unconditional.choices[0].text  # from <|endoftext|>


def test_stop_strings_end_the_text_before_them_streamed_or_not(client):
    settings = dict(model="a", prompt="Hello", max_tokens=40, seed=5)
    full = client.completions.create(**settings).choices[0].text
    stop = full[12:15]  # three characters from the middle: likely spread over more than one token
    expected = full[: full.index(stop)]
    cut = client.completions.create(**settings, stop=[stop, "never appears"])
    assert cut.choices[0].text == expected and cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < 40
    texts, reasons, chunks = streamed(client, **settings, stop=stop)
    assert texts == {0: expected} and reasons == {0: "stop"}
    assert all(stop not in c.choices[0].text for c in chunks if c.choices)


def test_stream_can_end_with_the_usage(client):
    chunks = list(client.completions.create(model="a", prompt="Hi", max_tokens=6, seed=1, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6


def test_openai_client_reports_our_errors_as_openai_errors(client):
    with pytest.raises(openai.NotFoundError, match="the model 'gpt-4' does not exist; this server has: a, b"):
        client.completions.create(model="gpt-4", prompt="Hi")
    with pytest.raises(openai.BadRequestError, match="max_tokens is 100000, more than this server allows") as e:
        client.completions.create(model="a", prompt="Hi", max_tokens=100000)
    assert e.value.code is None and e.value.param == "max_tokens"


# --------------------------------------------------------------------------------------------- bad input


def raw_request(live, method: str, path: str, body: bytes = b"", headers=None) -> tuple[int, dict]:
    host, port = live.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    status, text = response.status, response.read().decode()
    connection.close()
    return status, json.loads(text)


BAD_REQUESTS = [  # body, status, words of the message
    (b"{not json", 400, "not valid JSON"),
    (b"\xff\xfe\x00garbage", 400, "not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (b'"text"', 400, "must be a JSON object"),
    ({"prompt": "Hi"}, 400, "model is required"),
    ({"model": "a"}, 400, "prompt is required"),
    ({"model": "zzz", "prompt": "Hi"}, 404, "the model 'zzz' does not exist"),
    ({"model": 3, "prompt": "Hi"}, 400, "model: input should be a valid string"),
    ({"model": "a", "prompt": 5}, 400, "prompt must be a string, a list of strings"),
    ({"model": "a", "prompt": ["x", 1]}, 400, "prompt must be a string, a list of strings"),
    ({"model": "a", "prompt": []}, 400, "empty list"),
    ({"model": "a", "prompt": [[]]}, 400, "a prompt of token ids is empty"),
    ({"model": "a", "prompt": [50257]}, 400, "token id 50257 is outside the vocabulary"),
    ({"model": "a", "prompt": [-1]}, 400, "token id -1 is outside the vocabulary"),
    ({"model": "a", "prompt": "Hi", "max_tokens": "10"}, 400, "max_tokens: input should be a valid integer"),
    ({"model": "a", "prompt": "Hi", "max_tokens": 2.5}, 400, "max_tokens: input should be a valid integer"),
    ({"model": "a", "prompt": "Hi", "max_tokens": 0}, 400, "max_tokens: input should be greater than or equal to 1"),
    ({"model": "a", "prompt": "Hi", "max_tokens": 10**30}, 400, "more than this server allows"),
    ({"model": "a", "prompt": "Hi", "max_tokens": 200}, 400, "maximum context length is 128 tokens"),
    ({"model": "a", "prompt": "Hi " * 130}, 400, "more than this server allows (127"),
    ({"model": "a", "prompt": "Hi", "temperature": -1}, 400, "temperature: input should be greater than or equal to 0"),
    ({"model": "a", "prompt": "Hi", "temperature": True}, 400, "temperature: input should be a valid number"),
    ({"model": "a", "prompt": "Hi", "top_p": 0}, 400, "top_p: input should be greater than 0"),
    ({"model": "a", "prompt": "Hi", "top_p": 1.5}, 400, "top_p: input should be less than or equal to 1"),
    ({"model": "a", "prompt": "Hi", "top_k": -5}, 400, "top_k: input should be greater than or equal to -1"),
    ({"model": "a", "prompt": "Hi", "seed": -1}, 400, "seed: input should be greater than or equal to 0"),
    ({"model": "a", "prompt": "Hi", "seed": 2**64}, 400, "seed: input should be less than"),
    ({"model": "a", "prompt": "Hi", "n": 0}, 400, "n: input should be greater than or equal to 1"),
    ({"model": "a", "prompt": "Hi", "n": 9}, 400, "asks for 9 completions"),
    ({"model": "a", "prompt": ["a", "b", "c"], "n": 3}, 400, "asks for 9 completions (3 prompts x n=3)"),
    ({"model": "a", "prompt": "Hi", "stop": ["a", "b", "c", "d", "e"]}, 400, "at most 4"),
    ({"model": "a", "prompt": "Hi", "stop": [""]}, 400, "stop strings must not be empty"),
    ({"model": "a", "prompt": "Hi", "stop": 7}, 400, "stop must be a string, a list of strings, or null"),
    ({"model": "a", "prompt": "Hi", "stream": "yes"}, 400, "stream: input should be a valid boolean"),
    ({"model": "a", "prompt": "Hi", "logprobs": 2}, 400, "logprobs is not supported"),
    ({"model": "a", "prompt": "Hi", "frequency_penalty": 0.5}, 400, "frequency_penalty is not supported"),
    ({"model": "a", "prompt": "Hi", "max_token": 5}, 400, "unrecognized request argument: max_token"),
]


@pytest.mark.parametrize("body, status, words", BAD_REQUESTS)
def test_bad_requests_get_a_clear_4xx_openai_error_and_the_server_keeps_serving(live, body, status, words):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    got_status, answer = raw_request(live, "POST", "/v1/completions", data)
    assert got_status == status, answer
    assert set(answer) == {"error"} and set(answer["error"]) == {"message", "type", "param", "code"}
    assert words in answer["error"]["message"]
    assert "Traceback" not in answer["error"]["message"]
    status, good = live.post("/v1/completions", {"model": "a", "prompt": "Hi", "max_tokens": 2})
    assert status == 200 and good["usage"]["completion_tokens"] == 2


def test_unknown_paths_and_methods_get_openai_errors(live):
    status, answer = raw_request(live, "GET", "/v1/chat")
    assert status == 404 and answer["error"]["message"] == "no such endpoint: GET /v1/chat"
    status, answer = raw_request(live, "GET", "/v1/completions")
    assert status == 405 and "GET is not allowed on /v1/completions" in answer["error"]["message"]


def test_a_body_over_the_limit_is_refused_declared_or_not(live):
    limit = live.limits.max_body_bytes
    big = json.dumps({"model": "a", "prompt": "x" * limit}).encode()
    status, answer = raw_request(live, "POST", "/v1/completions", big)
    assert status == 413 and "over 1,048,576 bytes" in answer["error"]["message"]
    # chunked, no Content-Length: counted as it arrives
    host, port = live.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("POST", "/v1/completions", body=iter([big[i : i + 65536] for i in range(0, len(big), 65536)]),
                       headers={"Content-Type": "application/json"}, encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413 and "over 1,048,576 bytes" in json.loads(response.read())["error"]["message"]
    connection.close()


# --------------------------------------------------------------------------------------------- load, limits, clients that leave


def test_64_requests_8_at_a_time_are_all_answered_and_share_forward_passes(model_dirs):
    """A bounded load on loopback: every request answered, and requests that overlap were decoded together."""
    with LiveServer([f"a={model_dirs['a']}"], batch_size=8) as live:
        engine, widest = live.engines["a"], []
        real_decode = engine._decode

        def spy():
            widest.append(len(engine.running))
            real_decode()

        engine._decode = spy
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="-", max_retries=0, timeout=120)

        def one(i):
            stream = i % 2 == 1
            kwargs = dict(model="a", prompt=f"Request {i}:", max_tokens=16, seed=i)
            if stream:
                return "".join(c.choices[0].text for c in client.completions.create(stream=True, **kwargs))
            return client.completions.create(**kwargs).choices[0].text

        with ThreadPoolExecutor(max_workers=8) as pool:
            texts = list(pool.map(one, range(64), timeout=300))
        assert len(texts) == 64 and all(texts)
        assert max(widest) >= 4  # overlapping requests shared decode steps (batched, not one by one)
        live.wait_until_idle()


def test_requests_over_the_limit_get_429_and_a_closed_stream_frees_its_place(model_dirs):
    with LiveServer([f"a={model_dirs['a']}"], limits=Limits(max_concurrent_requests=1)) as live:
        gate = StepGate(live.engines["a"])
        host, port = live.url.removeprefix("http://").split(":")
        first = http.client.HTTPConnection(host, int(port), timeout=60)
        first.request("POST", "/v1/completions", headers={"Content-Type": "application/json"},
                      body=json.dumps({"model": "a", "prompt": "Hi", "max_tokens": 100, "stream": True}))
        response = first.getresponse()
        assert response.status == 200
        gate.allow(1)  # the prefill: the first token
        assert response.read1(65536).startswith(b"data: {")
        sequence = live.engines["a"].running[0]
        status, answer = live.post("/v1/completions", {"model": "a", "prompt": "Hi", "max_tokens": 2})
        assert status == 429 and answer["error"]["type"] == "rate_limit_error"
        assert "--max-concurrent-requests" in answer["error"]["message"]
        first.close()  # the client goes away mid-stream, 99 tokens short
        # Its place is free as soon as the server notices; the gate holds the engine until then, so the next step
        # is the one that must drop the sequence (no race between the disconnect and the steps allowed).
        live.wait_until_released()
        gate.allow(1)
        health = live.wait_until_idle()
        # its one step: the prefill's token and one decoded; none after it left
        assert health["sequences_running"] == 0 and sequence.cancelled and sequence.generated == 2
        gate.open()
        status, answer = live.post("/v1/completions", {"model": "a", "prompt": "Hi", "max_tokens": 2})
        assert status == 200


def test_a_plain_request_whose_client_leaves_frees_its_row(model_dirs):
    with LiveServer([f"a={model_dirs['a']}"]) as live:
        gate = StepGate(live.engines["a"])
        host, port = live.url.removeprefix("http://").split(":")
        body = json.dumps({"model": "a", "prompt": "Hi", "max_tokens": 100}).encode()
        with socket.create_connection((host, int(port)), timeout=60) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            gate.allow(1)  # the prefill: admitted and generating
            live._wait_for(lambda health: health["sequences_running"] == 1, timeout=30)
            sequence = live.engines["a"].running[0]
        live.wait_until_released()  # the server noticed the client left (the engine is held at its next step)
        gate.allow(1)  # the step that must drop it
        assert live.wait_until_idle()["sequences_running"] == 0
        assert sequence.cancelled and sequence.generated == 2  # its one step (prefill + decode), not 100 tokens


def test_a_failing_model_is_a_500_without_traceback_and_the_server_keeps_serving(model_dirs):
    """The second request is sent as soon as the first's error arrives, maybe while the engine is still reporting
    it: Engine.fail leaves waiting requests alone, so none is dropped (that order, forced: test_engine.py)."""
    with LiveServer([f"a={model_dirs['a']}"]) as live:
        engine = live.engines["a"]
        real_decode = engine._decode

        def broken():
            engine._decode = real_decode
            raise RuntimeError("simulated failure")

        engine._decode = broken
        status, answer = live.post("/v1/completions", {"model": "a", "prompt": "Hi", "max_tokens": 5})
        assert status == 500 and answer["error"]["type"] == "server_error"
        assert "simulated failure" in answer["error"]["message"] and "Traceback" not in answer["error"]["message"]
        status, answer = live.post("/v1/completions", {"model": "a", "prompt": "Hi", "max_tokens": 5})
        assert status == 200 and answer["usage"]["completion_tokens"] == 5
