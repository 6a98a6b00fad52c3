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


@pytest.mark.parametrize("optim_name", ["adamw", "muon"])
def test_every_optimizer_key_is_checked_against_its_range(optim_name):
    """What PyTorch's optimizers would refuse with a traceback at step 0, or what would make the first update
    non-finite (an infinite LR), is one line naming the key, for both optimizers."""
    bad = {"lr": ["0", "-1", "inf", "nan"], "min_lr": ["-1e-5", "inf"], "weight_decay": ["-0.1", "inf"],
           "beta1": ["2", "-0.1", "1"], "beta2": ["1", "1.5"], "eps": ["0", "-1", "inf"],
           "grad_clip": ["-1", "inf"]}
    if optim_name == "muon":
        bad.update({"muon_lr": ["0", "inf"], "muon_momentum": ["1", "-0.5"], "muon_weight_decay": ["-1", "inf"],
                    "muon_ns_steps": ["0"]})
    for key, values in bad.items():
        for value in values:
            with pytest.raises(ConfigError, match=f"optim.{key}'? (must be|wants float)"):
                resolve_config(overrides=[("optim.name", optim_name), (f"optim.{key}", value)])
    # the edges that are allowed
    good = resolve_config(overrides=[("optim.name", optim_name), ("optim.beta1", "0"), ("optim.beta2", "0.999"),
                                     ("optim.weight_decay", "0"), ("optim.grad_clip", "0"), ("optim.min_lr", "0")])
    assert (good.optim.beta1, good.optim.weight_decay) == (0.0, 0.0)


def test_bad_speedrun_muon_settings_are_refused_by_name():
    def refused(overrides, needle):
        with pytest.raises(ConfigError, match=needle):
            resolve_config(overrides=[("optim.name", "muon"), *overrides])

    refused([("optim.muon_ns_coefficients", "cubic")], "optim.muon_ns_coefficients must be quintic or polar_express")
    refused([("optim.muon_ns_coefficients", "polar_express"), ("optim.muon_ns_steps", "6")],
            "optim.muon_ns_steps must be at most 5 with polar_express")
    for beta2 in ("1", "-0.1"):
        refused([("optim.muon_normuon", "true"), ("optim.muon_normuon_beta2", beta2)],
                r"optim.muon_normuon_beta2 must be in \[0, 1\)")
    refused([("optim.muon_momentum_start", "1.0")], r"optim.muon_momentum_start must be in \[0, 1\)")
    refused([("optim.muon_momentum_warmup_steps", "-1")], "optim.muon_momentum_warmup_steps must be in")
    refused([("schedule.max_steps", "100"), ("optim.muon_momentum_warmup_steps", "101")],
            "optim.muon_momentum_warmup_steps must be in .0, schedule.max_steps = 100.")
    refused([("optim.cautious_wd", "true")], "optim.cautious_wd .* optim.muon_weight_decay is 0")
    with pytest.raises(ConfigError, match="optim.cautious_wd is a Muon setting"):
        resolve_config(overrides=[("optim.cautious_wd", "true")])
    ok = resolve_config(overrides=[("optim.name", "muon"), ("optim.muon_ns_coefficients", "polar_express"),
                                   ("optim.cautious_wd", "true"), ("optim.muon_weight_decay", "0.1")])
    assert ok.optim.muon_ns_coefficients == "polar_express" and ok.optim.cautious_wd
    # AdamW's cautious decay: either optimizer, and only with a decay to apply
    for name in ("adamw", "muon"):
        with pytest.raises(ConfigError, match="optim.adamw_cautious_wd .* optim.weight_decay is 0"):
            resolve_config(overrides=[("optim.name", name), ("optim.adamw_cautious_wd", "true"),
                                      ("optim.weight_decay", "0")])
        assert resolve_config(overrides=[("optim.name", name), ("optim.adamw_cautious_wd", "true")]).optim.adamw_cautious_wd


def test_zero_init_projections_is_refused_when_fine_tuning():
    with pytest.raises(ConfigError, match="model.zero_init_projections initialises a model trained from scratch, but "
                                          "model.init is 'gpt2'"):
        resolve_config(overrides=[("model.init", "gpt2"), ("model.zero_init_projections", "true")])
    assert resolve_config(overrides=[("model.zero_init_projections", "true")]).model.zero_init_projections
