"""The data pipeline's user-facing errors (bad sources, unusable output or data directories)."""

from gpt2lab.errors import BadValue, GPT2LabError


class DataError(GPT2LabError, ValueError):
    """A corpus, output directory or token-shard directory that cannot be used as asked."""


class BadDataValue(BadValue, DataError):
    """A parameter of the data pipeline (`param`: `out`, `shard_size`, ...) whose value cannot be used."""
