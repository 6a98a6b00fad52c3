"""Model files: the one resolver `MODEL -> GPT` used by every command, and Hugging Face-format load/save.

A MODEL is one of
  - a released GPT-2 name (`gpt2`, `gpt2-medium`, `gpt2-large`, `gpt2-xl`) or any Hugging Face hub id,
    downloaded with huggingface_hub into the standard HF cache (so a model a user already has is reused);
  - a local Hugging Face directory: `config.json` + `model.safetensors` (or a sharded safetensors index, or
    `pytorch_model.bin`, read with `torch.load(weights_only=True)`: never unpickle arbitrary objects);
  - a gpt2lab run directory: its newest complete checkpoint (`RUN/checkpoints/step_XXXXXXXX/`).

On disk our checkpoints *are* HF GPT-2 checkpoints, so transformers (and anything that reads GPT-2) loads them;
they carry GPT-2's tokenizer files too (`hf_tokenizer_files`), which loading here ignores.
The model keeps HF's names and HF's (in, out) weight layout (see `model.Conv1D`), so loading is a plain copy
checked key by key and shape by shape; the only liberties are HF's optional `transformer.` prefix, the old
causal-mask buffers, and `lm_head.weight`, which is tied to `transformer.wte.weight`.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import torch

from gpt2lab.atomic import atomic_path, atomic_write_text
from gpt2lab.errors import CheckpointError, ModelNotFoundError, TokenizerError, UnsupportedConfigError
from gpt2lab.hf_tokenizer_files import GPT2_VOCAB_SIZE, write_tokenizer_files
from gpt2lab.model import GPT, GPTConfig

IGNORED_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of older HF checkpoints
HUB_ALIASES = {name: f"openai-community/{name}" for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
SAFETENSORS, SAFETENSORS_INDEX, PYTORCH_BIN = "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_NAME = re.compile(r"^step_(\d+)$")


# --------------------------------------------------------------------------------------------- resolving


def load_model(source, device=None, dtype=None) -> GPT:
    """Resolve MODEL (see module docstring) and return a `GPT` in eval mode."""
    directory = resolve_model_dir(source)
    config = config_from_hf(read_hf_config(directory))
    state_dict = state_dict_from_hf(read_weights(directory), config, where=directory)
    with torch.device("meta"):  # no memory or time spent on a random init that is overwritten anyway
        model = GPT(config, init_weights=False)
    model.load_state_dict(state_dict, assign=True)
    model.lm_head.weight = model.transformer.wte.weight  # assign=True replaced the tied tensor; re-tie
    model.to(device=device, dtype=dtype)
    return model.eval()


def resolve_model_dir(source) -> Path:
    """Turn a MODEL string into a local directory holding `config.json` and weights."""
    path = Path(os.path.expanduser(str(source)))
    if path.is_dir():
        if (path / CHECKPOINTS_DIR).is_dir() and not (path / "config.json").exists():
            return latest_checkpoint(path)
        if not (path / "config.json").exists():
            raise ModelNotFoundError(
                f"{path} has no config.json: expected a Hugging Face GPT-2 directory "
                f"(config.json + {SAFETENSORS}) or a gpt2lab run directory (with {CHECKPOINTS_DIR}/)"
            )
        return path
    if path.exists():
        raise ModelNotFoundError(f"{path} is a file; pass the directory that holds config.json and the weights")
    if _looks_like_path(str(source)):
        raise ModelNotFoundError(f"no such directory: {path}")
    return _download_from_hub(HUB_ALIASES.get(str(source), str(source)))


def _looks_like_path(source: str) -> bool:
    # A hub id is "name" or "owner/name"; anything else with a slash, or starting like a path, is a path.
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source


def latest_checkpoint(run_dir) -> Path:
    """The newest complete checkpoint of a run (temporary `.tmp-*` directories are never complete)."""
    run_dir = Path(run_dir)
    candidates = []
    for child in (run_dir / CHECKPOINTS_DIR).iterdir():
        match = CHECKPOINT_NAME.match(child.name)
        if match and (child / "config.json").exists():
            candidates.append((int(match.group(1)), child))
    if not candidates:
        raise ModelNotFoundError(
            f"run directory {run_dir} has no complete checkpoint yet in {run_dir / CHECKPOINTS_DIR}"
        )
    return max(candidates)[1]


def _download_from_hub(repo_id: str) -> Path:
    """Config and weights of a hub repository in the standard HF cache: downloaded when the hub answers, else
    taken from the cache as they are (no network at all under HF_HUB_OFFLINE=1).

    huggingface_hub retries a file it cannot reach and does not have five times with backoff (~25 s, a warning
    each time) before giving up. So one quick request first asks whether the hub answers at all; when it does
    not, only the cache is looked at, and a miss is one line at once.
    """
    from huggingface_hub import constants
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)  # before any request: "a b" is no URL to ask the hub about
        online = not constants.HF_HUB_OFFLINE and _hub_answers(repo_id)
        return _fetch_model_files(repo_id, local_only=not online)
    except HFValidationError:
        raise _not_a_repository(repo_id) from None
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            why, fix = "HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE on a connected machine"
        else:
            why, fix = "the Hugging Face Hub is unreachable", "connect and retry"
        raise ModelNotFoundError(
            f"{repo_id!r} is not a local directory, not in the local HF cache, and {why}; {fix}, or pass a "
            f"local directory holding config.json + {SAFETENSORS} (from save_pretrained, or "
            f"`hf download {repo_id} --local-dir DIR` on a connected machine)"
        ) from None


def _hub_answers(repo_id: str) -> bool:
    """Whether the hub answers one request for the repository's config.json (a HEAD, no retries).

    Refuses, as a ModelNotFoundError, a repository the hub says does not exist, is gated, or has no config.json.
    The timeout is huggingface_hub's own for this request (HF_HUB_ETAG_TIMEOUT, 10 s by default): a slow link
    that still answers keeps working.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
    )

    try:
        get_hf_file_metadata(hf_hub_url(repo_id, "config.json"), timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except GatedRepoError:
        raise ModelNotFoundError(
            f"hub repository {repo_id!r} is gated: accept its terms on huggingface.co and run `hf auth login`"
        ) from None
    except RepositoryNotFoundError:
        raise _not_a_repository(repo_id) from None
    except EntryNotFoundError:
        raise ModelNotFoundError(f"hub repository {repo_id!r} has no config.json; is it a GPT-2 model?") from None
    except HfHubHTTPError as e:
        if e.response is None or e.response.status_code >= 500:
            return False  # the hub is down: as good as unreachable
        raise ModelNotFoundError(f"the Hugging Face Hub refused {repo_id!r}: {_first_line(e)}") from None
    except _network_errors():
        return False
    return True


def _network_errors() -> tuple:
    """What huggingface_hub's HTTP client raises when no server answers: requests' errors (huggingface_hub < 1.0)
    are OSErrors, httpx's and httpx2's (later versions) derive from their TransportError."""
    import sys

    errors = [OSError]
    for name in ("httpx2", "httpx"):
        if name in sys.modules:  # whichever huggingface_hub imported; never import one just to name it
            errors.append(sys.modules[name].TransportError)
    return tuple(errors)


def _not_a_repository(repo_id: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"{repo_id!r} is neither a local directory nor a Hugging Face hub repository "
        f"(for the released models use gpt2, gpt2-medium, gpt2-large or gpt2-xl)"
    )


def _fetch_model_files(repo_id: str, local_only: bool) -> Path:
    """hf_hub_download config.json and the weights (the first of safetensors, its index, pytorch_model.bin that
    exists), plus the shards of an index; with local_only, from the cache without any network request."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    def fetch(filename):
        return Path(hf_hub_download(repo_id, filename, local_files_only=local_only))

    config_path = fetch("config.json")
    for weights in (SAFETENSORS, SAFETENSORS_INDEX, PYTORCH_BIN):
        try:
            weights_path = fetch(weights)
            break
        except LocalEntryNotFoundError:
            if not local_only:
                raise  # online, the hub stopped answering mid-way
            # offline: this format is not cached, another one may be
        except EntryNotFoundError:
            pass  # online: the repository has no such file
    else:
        if local_only:
            raise LocalEntryNotFoundError(f"no weights of {repo_id} in the cache")
        raise ModelNotFoundError(f"hub repository {repo_id!r} has no {SAFETENSORS} or {PYTORCH_BIN}")
    if weights_path.name == SAFETENSORS_INDEX:
        index = json.loads(weights_path.read_text())
        for shard in sorted(set(index["weight_map"].values())):
            fetch(shard)
    if config_path.parent != weights_path.parent:  # cannot happen in the HF cache layout, but be explicit
        raise ModelNotFoundError(f"hub files of {repo_id!r} landed in different directories")
    return config_path.parent


# --------------------------------------------------------------------------------------------- config


def read_hf_config(directory: Path) -> dict:
    path = Path(directory) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the file is damaged") from None


# Options of HF's GPT2Config that change the computation, with the value this implementation computes.
_REQUIRED_HF_VALUES = {
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
}
_SUPPORTED_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # both are GELU with the tanh approximation


def config_from_hf(hf: dict) -> GPTConfig:
    """Build a GPTConfig from an HF GPT-2 `config.json`, refusing options this model does not implement."""
    model_type = hf.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise UnsupportedConfigError(f"model_type {model_type!r} is not GPT-2; gpt2lab loads GPT-2 checkpoints only")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in _SUPPORTED_ACTIVATIONS:
        raise UnsupportedConfigError(
            f"activation_function={activation!r} is not supported (GPT-2 uses {' or '.join(_SUPPORTED_ACTIVATIONS)})"
        )
    for key, required in _REQUIRED_HF_VALUES.items():
        if key in hf and bool(hf[key]) != required:
            raise UnsupportedConfigError(f"{key}={hf[key]!r} is not supported (this GPT-2 implements {key}={required})")
    n_embd = hf.get("n_embd", 768)
    if hf.get("n_inner") not in (None, 4 * n_embd):
        raise UnsupportedConfigError(f"n_inner={hf['n_inner']} is not supported (GPT-2's MLP is 4 * n_embd = {4 * n_embd})")
    try:
        return GPTConfig(
            block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
            vocab_size=hf.get("vocab_size", 50257),
            n_layer=hf.get("n_layer", 12),
            n_head=hf.get("n_head", 12),
            n_embd=n_embd,
            layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-5)),
        )
    except ValueError as e:
        raise CheckpointError(f"config.json describes an impossible model: {e}") from None


def config_to_hf(config: GPTConfig) -> dict:
    """An HF GPT-2 `config.json` for this config (what transformers needs to build GPT2LMHeadModel)."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "initializer_range": 0.02,
        # gpt2lab trains without dropout; GPT-2's released config says 0.1 (only matters for HF training).
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        # <|endoftext|> is both; a toy vocabulary without it has none
        "bos_token_id": 50256 if config.vocab_size > 50256 else None,
        "eos_token_id": 50256 if config.vocab_size > 50256 else None,
        "use_cache": True,
    }


# --------------------------------------------------------------------------------------------- weights


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF checkpoint directory, on the CPU, without unpickling anything."""
    directory = Path(directory)
    if (directory / SAFETENSORS).exists():
        return _read_safetensors(directory / SAFETENSORS)
    if (directory / SAFETENSORS_INDEX).exists():
        index = json.loads((directory / SAFETENSORS_INDEX).read_text())
        tensors = {}
        for shard in sorted(set(index["weight_map"].values())):
            tensors.update(_read_safetensors(directory / shard))
        return tensors
    if (directory / PYTORCH_BIN).exists():
        path = directory / PYTORCH_BIN
        try:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # weights_only refuses pickled code; a truncated zip fails too
            raise CheckpointError(f"cannot read {path}: {_first_line(e)}") from None
        if not isinstance(tensors, dict):
            raise CheckpointError(f"{path} does not hold a state dict")
        return tensors
    raise CheckpointError(
        f"{directory} has config.json but no weights ({SAFETENSORS}, {SAFETENSORS_INDEX} or {PYTORCH_BIN})"
    )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.exists():
        raise CheckpointError(f"{path} is missing (listed in {SAFETENSORS_INDEX})")
    try:
        return load_file(path, device="cpu")
    except Exception as e:  # SafetensorError for a truncated or corrupt header/body
        raise CheckpointError(f"cannot read {path}: {_first_line(e)}; the file is truncated or corrupt") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def state_dict_from_hf(hf: dict[str, torch.Tensor], config: GPTConfig, where="checkpoint") -> dict:
    """Map HF GPT-2 tensors onto our parameter names, checking every key and shape."""
    expected = _expected_shapes(config)
    ours = {}
    unexpected = []
    for key, tensor in hf.items():
        name = key if key.startswith(("transformer.", "lm_head.")) else f"transformer.{key}"
        if name.endswith(IGNORED_BUFFERS):
            continue
        if name not in expected:
            unexpected.append(key)
            continue
        ours[name] = tensor
    if unexpected:
        raise CheckpointError(f"{where}: unexpected keys {_some(unexpected)}; is this a GPT-2 checkpoint?")

    wte = ours.get("transformer.wte.weight")
    lm_head = ours.pop("lm_head.weight", None)
    if lm_head is not None and wte is not None and not torch.equal(lm_head, wte):
        raise CheckpointError(f"{where}: lm_head.weight differs from transformer.wte.weight, but GPT-2 ties them")
    missing = [k for k in expected if k not in ours and k != "lm_head.weight"]
    if missing:
        raise CheckpointError(f"{where}: missing keys {_some(missing)}; the checkpoint is incomplete")

    for name, tensor in sorted(ours.items(), key=lambda item: list(expected).index(item[0])):
        shape = expected[name]  # checked in model order, so the first mismatch reported is the earliest
        if tuple(tensor.shape) != shape:
            raise CheckpointError(
                f"{where}: {name} has shape {tuple(tensor.shape)} but config.json implies {shape}; "
                f"the weights and config.json do not belong together"
            )
        if not tensor.is_floating_point():
            raise CheckpointError(f"{where}: {name} has dtype {tensor.dtype}, expected floating point")
    ours["lm_head.weight"] = ours["transformer.wte.weight"]
    return ours


def _expected_shapes(config: GPTConfig) -> dict[str, tuple]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in GPT(config, init_weights=False).state_dict().items()}


def _some(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


def state_dict_to_hf(model: GPT) -> dict[str, torch.Tensor]:
    """Our parameters under HF names, lm_head left out (tied to wte)."""
    hf = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # HF re-ties it to transformer.wte.weight; safetensors cannot store shared storage
        hf[name] = tensor.detach().contiguous().cpu()
    return hf


def save_model(model: GPT, directory) -> Path:
    """Write `model.safetensors`, the tokenizer files and `config.json` (HF GPT-2 format), each atomically.

    config.json goes last: it is what marks a directory as a model (`resolve_model_dir`, `latest_checkpoint`),
    so a save interrupted into a fresh directory never looks complete.
    """
    from safetensors.torch import save_file

    model = getattr(model, "_orig_mod", model)  # a torch.compile'd model: save the module underneath
    model = getattr(model, "module", model)  # a DDP-wrapped model
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"cannot save to {directory}: it is a file, not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / SAFETENSORS) as tmp:
        save_file(state_dict_to_hf(model), tmp, metadata={"format": "pt"})
    _save_tokenizer_files(model.config, directory)
    config = config_to_hf(model.config)
    config["dtype"] = str(model.transformer.wte.weight.dtype).removeprefix("torch.")
    atomic_write_text(directory / "config.json", json.dumps(config, indent=2) + "\n")
    return directory


def _save_tokenizer_files(config: GPTConfig, directory: Path) -> None:
    """GPT-2's tokenizer next to the weights, so HF tools load it from the checkpoint itself.

    Without the BPE ranks (offline, no cached copy) the model is still saved, with a warning: weights matter more.
    """
    if config.vocab_size < GPT2_VOCAB_SIZE:
        return  # a toy vocabulary: GPT-2's tokenizer would produce ids this model does not have
    try:
        write_tokenizer_files(directory, config.block_size)
    except TokenizerError as e:
        # stacklevel 3 names save_model's caller; the message has no path, so Python shows it once per run
        warnings.warn(f"saved the model without tokenizer files (vocab.json, merges.txt): {e}", stacklevel=3)
