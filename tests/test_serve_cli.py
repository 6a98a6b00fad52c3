"""`gpt2lab serve` as a user runs it: it prints its URL, answers, and stops cleanly on Ctrl-C; what the user got
wrong (no such model, a port in use, bad flag values, the serve extra missing) is one line and exit code 2."""

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

from gpt2lab.cli import main
from tests.conftest import REPO, run_cli

pytest.importorskip("fastapi", reason="gpt2lab serve needs the serve extra: pip install -e '.[serve]'")


@pytest.fixture
def never_serve(monkeypatch):
    """In-process `main(["serve", ...])` must be refused before serving: should it start, fail rather than hang."""
    import uvicorn

    def started(self, sockets=None):
        raise AssertionError("the server started")

    monkeypatch.setattr(uvicorn.Server, "run", started)


def test_serve_prints_its_url_answers_and_stops_cleanly_on_ctrl_c(tiny_model_dir):
    process = subprocess.Popen(
        [sys.executable, "-m", "gpt2lab", "serve", f"tiny={tiny_model_dir}", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    try:
        lines = []
        for line in process.stdout:  # bounded: the process exits (and the pipe closes) if it fails to start
            lines.append(line)
            if "playground at" in line:
                break
        assert "playground at http://127.0.0.1:" in lines[-1], "".join(lines) + process.stderr.read()
        url = lines[-1].split("playground at ")[1].split()[0].rstrip("/")
        request = urllib.request.Request(url + "/v1/completions", method="POST",
                                         data=json.dumps({"model": "tiny", "prompt": "Hi", "max_tokens": 3}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert json.loads(response.read())["usage"]["completion_tokens"] == 3
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert "gpt2lab serve: stopped" in out
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_a_port_in_use_is_one_line_before_loading_anything(tiny_model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", tiny_model_dir, "--port", port, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"gpt2lab serve: error: port {port} on 127.0.0.1 is already in use "
                                     f"(another server?); choose another with --port")
    assert "loaded" not in result.stdout


@pytest.mark.parametrize("argv, message", [
    (["no/such/model-dir"], "no such directory: no/such/model-dir"),
    (["{tiny}", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["{tiny}", "--max-n", "0"], "--max-n must be at least 1, got 0"),
    (["{tiny}", "--max-tokens", "-5"], "--max-tokens must be at least 1, got -5"),
    (["{tiny}", "--port", "70000"], "--port must be in 0..65535, got 70000"),
    (["a={tiny}", "a={tiny}"], "two models would be served as 'a'; give them names: NAME=MODEL"),
    (["{tiny}", "--host", "no.such.host.invalid"], "--host no.such.host.invalid: not an address of this machine"),
    (["{tiny}", "--dtype", "float8"], "unknown dtype 'float8'"),
])
def test_bad_arguments_are_one_line_and_exit_2(tiny_model_dir, capsys, never_serve, argv, message):
    code = main(["serve", "--port", "0", *(a.replace("{tiny}", str(tiny_model_dir)) for a in argv)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("gpt2lab serve: error: ") and message in err and err.count("\n") == 1


def test_a_model_with_another_vocabulary_is_refused(tmp_path, capsys, never_serve):
    from tests.conftest import tiny_gpt

    tiny_gpt().save_pretrained(tmp_path / "odd")  # 1,011 tokens: not GPT-2's tokenizer
    assert main(["serve", str(tmp_path / "odd"), "--port", "0"]) == 2
    assert "has a vocabulary of 1011 tokens, fewer than GPT-2's 50257" in capsys.readouterr().err


def test_without_the_serve_extra_the_error_names_the_pip_command(tiny_model_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if it were not installed
    assert main(["serve", str(tiny_model_dir)]) == 2
    err = capsys.readouterr().err
    assert err == ("gpt2lab serve: error: gpt2lab serve needs FastAPI and uvicorn (uvicorn is missing): "
                   "pip install 'gpt2lab[serve]'\n")
