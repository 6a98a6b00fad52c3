"""Where a training config comes from: presets, a TOML/YAML/JSON file, the command line, a run's saved config.

Resolution order (later wins): dataclass defaults -> `--preset NAME` (gpt2lab/presets/NAME.toml) -> `--config FILE`
-> `--set section.key=value` / `--section.key value` overrides. `resolve_config` applies them in that order and
checks the result (train/config_checks.py).
"""

import difflib
import json
from pathlib import Path

from gpt2lab.errors import first_line
from gpt2lab.storage.run_directory import RunDirectory
from gpt2lab.train.config import ConfigError, OptimSection, TrainConfig, apply_mapping, set_value
from gpt2lab.train.config_checks import MUON_KEYS, validate

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"


def read_config_file(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text) or {}
        if path.suffix == ".json":
            return json.loads(text)
        return _toml_loads(text)
    except Exception as e:  # a syntax error in the user's file: report where, not a traceback
        first = first_line(e)
        raise ConfigError(f"cannot parse {path}: {first}") from None


def _toml_loads(text: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib
    return tomllib.loads(text)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def preset_path(name: str) -> Path:
    path = PRESETS_DIR / f"{name}.toml"
    if not path.is_file():
        close = difflib.get_close_matches(name, preset_names(), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown preset '{name}'{hint} (presets: {', '.join(preset_names())})")
    return path


def parse_override(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}' must look like section.key=value, e.g. optim.lr=3e-4")
    return key.strip(), value.strip()


def command_line_overrides(assignments=(), flags=(), shortcuts=None) -> list[tuple[str, str]]:
    """The overrides a command line gives, in the order they apply: `--set section.key=value` (`assignments`),
    then `--section.key value` or `--section.key=value` (`flags`, the words argparse left over), then shortcut
    flags (`shortcuts`: {"schedule.max_steps": value or None}) that were given."""
    overrides = [parse_override(item) for item in assignments]
    flags = list(flags)
    while flags:
        flag = flags.pop(0)
        if not flag.startswith("--") or "." not in flag.split("=")[0]:
            raise ConfigError(f"unrecognized argument '{flag}'; config keys are given as --section.key VALUE "
                              f"or --set section.key=VALUE")
        if "=" in flag:
            overrides.append(parse_override(flag[2:]))
        elif flags:
            overrides.append((flag[2:], flags.pop(0)))
        else:
            raise ConfigError(f"{flag} needs a value")
    for key, value in (shortcuts or {}).items():
        if value is not None:
            overrides.append((key, str(value)))
    return overrides


def resolve_config(preset=None, config_file=None, overrides=(), base: dict | None = None) -> TrainConfig:
    """Build the TrainConfig: defaults, then `base` (a saved run config), preset, file, then overrides."""
    config = TrainConfig()
    if base is not None:
        apply_mapping(config, base, "saved run config")
    from_preset, from_user = set(), set()  # the keys each sets (a saved run config lists every key: not counted)
    if preset:
        mapping = read_config_file(preset_path(preset))
        apply_mapping(config, mapping, f"preset {preset}")
        from_preset = {f"{section}.{key}" for section, values in mapping.items() for key in values}
    if config_file:
        mapping = read_config_file(config_file)
        apply_mapping(config, mapping, str(config_file))
        from_user = {f"{section}.{key}" for section, values in mapping.items() for key in values}
    for key, value in overrides:
        set_value(config, key, value)
        from_user.add(key)
    given = (from_preset | from_user) - drop_preset_muon_settings(config, from_preset, from_user)
    validate(config, given)
    return config


def drop_preset_muon_settings(config: TrainConfig, from_preset: set, from_user: set) -> set:
    """A preset that trains with Muon (the demo's) carries Muon settings; a user who switches it to AdamW
    (`--optim.name adamw`) means "this preset, with AdamW", so those settings go back to their defaults instead of
    being refused. Muon settings the user gave (file, overrides) still are. Returns the keys dropped."""
    if config.optim.name != "adamw":
        return set()
    dropped = {key for key in MUON_KEYS if key in from_preset and key not in from_user}
    defaults = OptimSection()
    for key in dropped:
        field = key.split(".", 1)[1]
        setattr(config.optim, field, getattr(defaults, field))
    return dropped



def read_run_config(run_dir) -> dict:
    return read_config_file(RunDirectory(run_dir).config_file)
