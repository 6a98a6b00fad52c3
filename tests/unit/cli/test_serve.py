"""`gpt2lab serve` in-process (gpt2lab/cli/serve.py), refused before it serves: what the user got wrong (no such
model, bad flag values, another vocabulary, the serve extra missing) is one line and exit code 2. (In a real process:
it prints its URL, answers, stops on Ctrl-C, and a port in use: tests/e2e/test_serve.py.)"""

import sys

import pytest

from gpt2lab.cli import main

pytest.importorskip("fastapi", reason="gpt2lab serve needs the serve extra: pip install -e '.[serve]'")


@pytest.fixture
def never_serve(monkeypatch):
    """In-process `main(["serve", ...])` must be refused before serving: should it start, fail rather than hang."""
    import uvicorn

    def started(self, sockets=None):
        raise AssertionError("the server started")

    monkeypatch.setattr(uvicorn.Server, "run", started)


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
