"""Where a training config comes from (gpt2lab/train/config_files.py): presets, a file and overrides in layers,
and a saved run config read back to the same config."""

import pytest

from gpt2lab.train.config import ConfigError, OptimSection, to_toml
from gpt2lab.train.config_files import read_config_file, resolve_config


def test_config_layers_file_overrides_and_toml_round_trip(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("optim:\n  lr: 3.0e-3\nschedule:\n  max_steps: 777\n")
    config = resolve_config("shakespeare-cpu", path, [("optim.beta2", "0.99"), ("runtime.compile", "true")])
    assert config.model.n_layer == 6 and config.optim.lr == 3e-3 and config.schedule.max_steps == 777
    assert config.optim.beta2 == 0.99 and config.runtime.compile is True
    (tmp_path / "saved.toml").write_text(to_toml(config))
    assert resolve_config(base=read_config_file(tmp_path / "saved.toml")) == config
    reproduction = resolve_config("gpt2-124m-fineweb-edu")
    assert (reproduction.data.total_batch_tokens, reproduction.data.batch_size, reproduction.data.seq_len) == (
        524288, 64, 1024)
    assert (reproduction.optim.lr, reproduction.optim.min_lr, reproduction.schedule.warmup_steps,
            reproduction.schedule.max_steps, reproduction.model.vocab_size) == (6e-4, 6e-5, 715, 19073, 50304)


def test_the_muon_reproduction_preset_is_the_same_run_in_a_third_of_the_tokens():
    adamw, muon = resolve_config("gpt2-124m-fineweb-edu"), resolve_config("gpt2-124m-fineweb-edu-muon")
    assert (muon.model, muon.data, muon.eval) == (adamw.model, adamw.data, adamw.eval)  # same model, data, batch
    assert muon.optim.name == "muon" and muon.schedule.name == "wsd"
    tokens = lambda config: config.schedule.max_steps * config.data.total_batch_tokens  # noqa: E731
    assert tokens(muon) <= tokens(adamw) / 3


def test_a_muon_preset_switched_to_adamw_drops_its_muon_settings_but_the_user_s_are_still_refused():
    """The demo preset trains with Muon; `--optim.name adamw` on it means "this preset with AdamW": the preset's
    Muon settings return to their defaults (and so do not reach the saved config) instead of being refused."""
    demo = resolve_config("shakespeare-cpu")
    assert demo.optim.name == "muon" and demo.optim.muon_lr == 0.01
    adamw = resolve_config("shakespeare-cpu", overrides=[("optim.name", "adamw")])
    assert adamw.optim.name == "adamw" and adamw.optim.muon_lr == OptimSection().muon_lr
    assert (adamw.model, adamw.data, adamw.schedule) == (demo.model, demo.data, demo.schedule)
    with pytest.raises(ConfigError, match="optim.muon_lr is a Muon setting but optim.name is adamw"):
        resolve_config("shakespeare-cpu", overrides=[("optim.name", "adamw"), ("optim.muon_lr", "0.02")])
