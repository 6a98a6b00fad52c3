"""Starting a server (gpt2lab/serve/server.py), the parts that need no model: the port bound before anything loads
(a port in use refused in one line), the URL it prints, and the serve extra. (A real `gpt2lab serve`:
tests/e2e/test_serve.py.)"""

import socket
import sys

import pytest

from gpt2lab.errors import GPT2LabError
from gpt2lab.serve import server


def test_a_free_port_is_bound_and_listening():
    sock = server.bind("127.0.0.1", 0)  # port 0: the OS chooses
    try:
        host, port = sock.getsockname()
        assert host == "127.0.0.1" and port > 0
        with socket.create_connection((host, port), timeout=10):  # it listens: a client connects
            pass
    finally:
        sock.close()


def test_a_port_in_use_is_refused_in_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(GPT2LabError) as refused:
            server.bind("127.0.0.1", port)
    assert str(refused.value) == (f"port {port} on 127.0.0.1 is already in use (another server?); choose another "
                                  f"with --port")


def test_the_url_brackets_an_ipv6_address():
    assert server.url("127.0.0.1", 8000) == "http://127.0.0.1:8000"
    assert server.url("::1", 8000) == "http://[::1]:8000"


def test_without_the_serve_extra_the_error_names_what_is_missing_and_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if it were not installed
    with pytest.raises(GPT2LabError, match=r"needs FastAPI and uvicorn \(fastapi is missing\): pip install "
                                           r"'gpt2lab\[serve\]'"):
        server.require_serve_extra()
