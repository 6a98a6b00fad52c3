"""Errors caused by what the user asked for, as opposed to bugs.

The CLI prints a `GPT2LabError` as one line (no traceback) and exits non-zero. Each subclass also derives from
the built-in exception a Python caller would expect (`FileNotFoundError`, `ValueError`, ...).
"""


class GPT2LabError(Exception):
    """A problem with the user's input: the message names it and says how to fix it."""


class BadValue(GPT2LabError, ValueError):
    """A value that cannot be used, named as the library knows it (`param`: `batch_size`, `data.seq_len`).

    The library cannot know how the user gave it: the CLI shows `param` as its flag (`--batch-size`), a training
    config key stays the key. `str(error)` is "PARAM PROBLEM"; `error.named(name)` is the same sentence naming it
    otherwise."""

    def __init__(self, param: str, problem: str):
        super().__init__(f"{param} {problem}")
        self.param, self.problem = param, problem

    def named(self, name: str) -> str:
        return f"{name} {self.problem}"


class ModelNotFoundError(GPT2LabError, FileNotFoundError):
    """A model source that is neither a usable local directory nor a reachable hub repository."""


class CheckpointError(GPT2LabError, ValueError):
    """Weights that are unreadable, truncated, or do not fit the config they came with."""


class UnsupportedConfigError(GPT2LabError, ValueError):
    """A Hugging Face config option that this GPT-2 implementation does not implement."""


class TokenizerError(GPT2LabError, RuntimeError):
    """The GPT-2 BPE ranks could not be found anywhere."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), for one-line error messages."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
