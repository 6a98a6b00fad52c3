"""The data pipeline's user-facing error (bad sources, unusable output or data directories)."""

from gpt2lab.errors import GPT2LabError


class DataError(GPT2LabError, ValueError):
    """A corpus, output directory or token-shard directory that cannot be used as asked."""
