"""The data pipeline's errors (gpt2lab/data/errors.py): user errors a Python caller catches as ValueError; a bad value
names its parameter and is a DataError too."""

import pytest

from gpt2lab.data import DataError
from gpt2lab.data.errors import BadDataValue
from gpt2lab.errors import BadValue, GPT2LabError


def test_a_data_error_is_a_user_error_and_a_value_error():
    for caught in (DataError, GPT2LabError, ValueError):
        with pytest.raises(caught, match="no manifest.json"):
            raise DataError("data has no manifest.json")


def test_a_bad_data_value_is_a_bad_value_and_a_data_error():
    error = BadDataValue("shard_size", "must be at least 1, got 0")
    for caught in (BadValue, DataError):
        with pytest.raises(caught):
            raise error
    assert str(error) == "shard_size must be at least 1, got 0"
    assert error.named("--shard-size") == "--shard-size must be at least 1, got 0"
