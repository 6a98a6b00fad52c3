"""`gpt2lab.cli.main` (gpt2lab/cli/__init__.py): a library parameter is named as the command's flag, an unknown flag
is one line, and what the OS refused and the library did not wrap still ends a command in one line (or quietly, for
a reader that stopped reading)."""

import argparse
import errno

import pytest


@pytest.mark.parametrize("raised, code, said", [
    (PermissionError(errno.EACCES, "Permission denied", "/data/shard.bin"), 2,
     "gpt2lab plot: error: /data/shard.bin: Permission denied\n"),
    (BrokenPipeError(errno.EPIPE, "Broken pipe"), 0, ""),  # `gpt2lab sample ... | head` stopped reading: fine
])
def test_os_errors_the_library_did_not_wrap_are_still_one_line(monkeypatch, capsys, raised, code, said):
    from gpt2lab import cli
    from gpt2lab.tools import plot

    def refused(*args, **kwargs):
        raise raised

    monkeypatch.setattr(plot, "plot_runs", refused)
    assert cli.main(["plot", "some-run"]) == code
    assert capsys.readouterr().err == said


def test_a_library_parameter_is_named_as_the_flag_the_user_typed():
    from gpt2lab.cli import user_message
    from gpt2lab.errors import BadValue, GPT2LabError

    parser = argparse.ArgumentParser(prog="gpt2lab sample")
    parser.add_argument("-b", "--batch-size", dest="batch_size", type=int)
    parser.add_argument("model")
    assert user_message(BadValue("batch_size", "must be at least 1, got 0"), parser) == (
        "--batch-size must be at least 1, got 0")  # the long form of the flag
    assert user_message(BadValue("data.seq_len", "is longer than the context"), parser) == (
        "data.seq_len is longer than the context")  # no flag for it (a config key): named as it is
    assert user_message(BadValue("model", "is not a model"), parser) == "model is not a model"  # positional: no flag
    assert user_message(GPT2LabError("just a sentence"), parser) == "just a sentence"


def test_a_bad_value_from_the_library_reaches_the_user_as_the_flag(capsys, monkeypatch):
    from gpt2lab.cli import main
    from gpt2lab.errors import BadValue
    from gpt2lab.tools import plot

    def refused(*args, **kwargs):
        raise BadValue("x", "must be step or time")

    monkeypatch.setattr(plot, "plot_runs", refused)
    assert main(["plot", "some-run"]) == 2
    assert capsys.readouterr().err == "gpt2lab plot: error: --x must be step or time\n"


def test_an_unknown_flag_is_one_line_naming_the_help(capsys):
    from gpt2lab.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["inspect", "gpt2", "--no-such-flag"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == "gpt2lab: error: unrecognized arguments: --no-such-flag (see 'gpt2lab --help')\n"
