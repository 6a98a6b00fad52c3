"""What a server is started with (gpt2lab/serve/config.py): MODEL or NAME=MODEL specs, the port and batch size, and
the limits, each bad value refused by name."""

import pytest

from gpt2lab.errors import BadValue, GPT2LabError
from gpt2lab.serve.config import Limits, ServeConfig, parse_model_specs


def test_a_model_is_served_under_its_own_name_or_the_one_given():
    assert parse_model_specs(["gpt2", "mine=runs/x", "openai-community/gpt2", "runs/a=b"]) == [
        ("gpt2", "gpt2"), ("mine", "runs/x"), ("openai-community/gpt2", "openai-community/gpt2"),
        ("runs/a=b", "runs/a=b"),  # a NAME has no '/': this is a path that holds '='
    ]


def test_two_models_under_one_name_or_a_name_without_a_model_are_refused():
    with pytest.raises(GPT2LabError, match="two models would be served as 'a'; give them names: NAME=MODEL"):
        parse_model_specs(["a=runs/x", "a=runs/y"])
    with pytest.raises(GPT2LabError, match="two models would be served as 'gpt2'"):
        parse_model_specs(["gpt2", "gpt2"])
    with pytest.raises(GPT2LabError, match="'mine=' names no model; use MODEL or NAME=MODEL"):
        parse_model_specs(["mine="])


@pytest.mark.parametrize("config, param, problem", [
    (ServeConfig(["gpt2"], port=70000), "port", "must be in 0..65535, got 70000"),
    (ServeConfig(["gpt2"], port=-1), "port", "must be in 0..65535, got -1"),
    (ServeConfig(["gpt2"], batch_size=0), "batch_size", "must be at least 1, got 0"),
    (ServeConfig(["gpt2"], limits=Limits(max_tokens=0)), "max_tokens", "must be at least 1, got 0"),
    (ServeConfig(["gpt2"], limits=Limits(max_prompt_tokens=0)), "max_prompt_tokens", "must be at least 1, got 0"),
    (ServeConfig(["gpt2"], limits=Limits(max_concurrent_requests=-3)), "max_concurrent_requests",
     "must be at least 1, got -3"),
], ids=["port-high", "port-negative", "batch-size", "max-tokens", "max-prompt-tokens", "max-concurrent"])
def test_a_bad_setting_is_refused_naming_it(config, param, problem):
    with pytest.raises(BadValue) as refused:
        config.check()
    assert (refused.value.param, refused.value.problem) == (param, problem)


def test_the_defaults_and_the_edges_of_each_range_are_accepted():
    for config in (ServeConfig(["gpt2"]), ServeConfig(["a=x", "b=y"], port=0, batch_size=1),
                   ServeConfig(["gpt2"], port=65535, limits=Limits(max_tokens=1, max_prompt_tokens=None, max_n=1))):
        config.check()
    assert (ServeConfig(["gpt2"]).host, ServeConfig(["gpt2"]).port) == ("127.0.0.1", 8000)  # loopback unless asked
