"""`gpt2lab serve` as a user runs it: it prints its URL, answers, and stops cleanly on Ctrl-C; a port in use is one
line, before any model is loaded."""

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

from tests.conftest import REPO, run_cli

pytest.importorskip("fastapi", reason="gpt2lab serve needs the serve extra: pip install -e '.[serve]'")


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
