"""User errors (gpt2lab/errors.py): each is a GPT2LabError and the built-in exception a Python caller expects; a
BadValue says its problem under the parameter's name or another; the first line of any error's message."""

import pytest

from gpt2lab import errors
from gpt2lab.errors import BadValue, GPT2LabError, first_line


@pytest.mark.parametrize("error, builtin", [
    (errors.BadValue, ValueError),
    (errors.ModelNotFoundError, FileNotFoundError),
    (errors.CheckpointError, ValueError),
    (errors.UnsupportedConfigError, ValueError),
    (errors.TokenizerError, RuntimeError),
])
def test_each_error_is_a_user_error_and_the_builtin_a_caller_expects(error, builtin):
    raised = error("param", "is wrong") if error is BadValue else error("is wrong")
    for caught in (GPT2LabError, builtin):  # the CLI catches the first, a Python caller the second
        with pytest.raises(caught):
            raise raised


def test_a_bad_value_names_its_parameter_as_the_library_knows_it_or_as_the_caller_does():
    error = BadValue("batch_size", "must be at least 1, got 0")
    assert str(error) == "batch_size must be at least 1, got 0"
    assert (error.param, error.problem) == ("batch_size", "must be at least 1, got 0")
    assert error.named("--batch-size") == "--batch-size must be at least 1, got 0"


def test_first_line_of_a_message_or_the_type_of_an_error_without_one():
    assert first_line(RuntimeError("  No space left on device\n  while writing shard 3\n")) == "No space left on device"
    assert first_line(KeyError()) == "KeyError"
    assert first_line(OSError("   \n")) == "OSError"
