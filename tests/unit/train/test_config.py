"""The training config's typed sections (gpt2lab/train/config.py): keys set from text by type, unknown keys
refused with a suggestion, the TOML written for RUN/config.toml, and the fields a resume may change."""

import pytest

from gpt2lab.train.config import ConfigError, TrainConfig, incompatible_fields, set_value, to_toml
from gpt2lab.train.config_files import resolve_config


def test_config_errors_name_the_key_and_suggest():
    with pytest.raises(ConfigError, match="did you mean 'optim.lr'"):
        resolve_config(overrides=[("optim.lrr", "1")])
    with pytest.raises(ConfigError, match="did you mean 'optim.weight_decay'"):
        resolve_config(overrides=[("weight_decay", "1")])
    with pytest.raises(ConfigError, match="wants int"):
        resolve_config(overrides=[("schedule.max_steps", "ten")])
    with pytest.raises(ConfigError, match="did you mean 'shakespeare-cpu'"):
        resolve_config("shakespeare_cpu")
    old, new = TrainConfig(), TrainConfig()
    new.optim.lr, new.runtime.device, new.eval.val_every = 1e-3, "cuda", 5
    assert incompatible_fields(old, new) == ["optim.lr (0.0006 -> 0.001)"]


def test_set_value_converts_text_to_the_field_type_and_toml_round_trips_every_key(tmp_path):
    config = TrainConfig()
    set_value(config, "optim.lr", "3e-4")
    set_value(config, "data.batch_size", "auto")
    set_value(config, "runtime.compile", "yes")
    set_value(config, "schedule.max_steps", "1_000")
    assert (config.optim.lr, config.data.batch_size, config.runtime.compile, config.schedule.max_steps) == (
        3e-4, "auto", True, 1000)
    with pytest.raises(ConfigError, match="wants an int or \"auto\""):
        set_value(config, "data.batch_size", "many")
    with pytest.raises(ConfigError, match="wants float"):
        set_value(config, "optim.lr", "nan")
    import tomllib

    assert tomllib.loads(to_toml(config)) == config.to_dict()
