"""Values that parse but make no sense (gpt2lab/train/config_checks.py), refused by name before any work."""

import pytest

from gpt2lab.train.config import ConfigError
from gpt2lab.train.config_files import resolve_config


def test_bad_optimizer_and_schedule_settings_are_refused():
    def refused(overrides, needle):
        with pytest.raises(ConfigError, match=needle):
            resolve_config(overrides=overrides)

    refused([("optim.name", "sgd")], "optim.name must be adamw or muon, got 'sgd'")
    refused([("optim.muon_lr", "0.05")], "optim.muon_lr is a Muon setting but optim.name is adamw")
    refused([("optim.muon_split_qkv", "true")], "optim.muon_split_qkv is a Muon setting")
    refused([("schedule.name", "linear")], "schedule.name must be cosine or wsd")
    for fraction in ("0", "-0.1", "1.5"):
        refused([("schedule.decay_fraction", fraction)], r"schedule.decay_fraction must be in \(0, 1\]")
    refused([("optim.name", "muon"), ("optim.muon_momentum", "1")], "optim.muon_momentum must be in")
    for key in ("optim.lr", "optim.min_lr"):  # up front: not after a step has made the weights NaN
        for value in ("inf", "1e400"):
            refused([(key, value)], f"{key} must be a finite number, got inf")
    refused([("optim.name", "muon"), ("optim.muon_lr", "inf")], "optim.muon_lr must be a finite number, got inf")
    assert resolve_config(overrides=[("optim.name", "muon"), ("optim.muon_lr", "0.05")]).optim.muon_lr == 0.05
    assert resolve_config(overrides=[("schedule.decay_fraction", "1")]).schedule.decay_fraction == 1.0
    # a saved run config lists every key, Muon's included: resuming an AdamW run from it is not refused
    saved = resolve_config().to_dict()
    assert resolve_config(base=saved).optim.name == "adamw"
