"""The Hugging Face GPT-2 file format: config.json <-> GPTConfig, the weight files, and HF names <-> ours.

A model directory holds `config.json` + `model.safetensors` (or a sharded safetensors index, or
`pytorch_model.bin`, read with `torch.load(weights_only=True)`: never unpickle arbitrary objects). On disk our
checkpoints *are* HF GPT-2 checkpoints, so transformers (and anything that reads GPT-2) loads them; they carry
GPT-2's tokenizer files too (`hf_tokenizer_files`), which reading here ignores.
The model keeps HF's names and HF's (in, out) weight layout (see `model.Conv1D`), so reading is a plain copy
checked key by key and shape by shape; the only liberties are HF's optional `transformer.` prefix, the old
causal-mask buffers, and `lm_head.weight`, which is tied to `transformer.wte.weight`.

This module describes models without building one (the shapes to check come from the caller,
`GPT.from_pretrained`), so it does not import model.py, which imports it.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import torch

from gpt2lab.storage.atomic import atomic_path, atomic_write_text
from gpt2lab.errors import CheckpointError, TokenizerError, UnsupportedConfigError, first_line
from gpt2lab.model.config import GPTConfig
from gpt2lab.hf.tokenizer_files import GPT2_VOCAB_SIZE, write_tokenizer_files

CONFIG_JSON = "config.json"  # written last: a directory that has it is a complete model
SAFETENSORS, SAFETENSORS_INDEX, PYTORCH_BIN = "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"
IGNORED_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of older HF checkpoints


# --------------------------------------------------------------------------------------------- config


def read_config(directory) -> GPTConfig:
    """The GPTConfig of an HF GPT-2 directory, from its config.json alone (no weights are read)."""
    return config_from_hf(read_hf_config(directory))


def read_hf_config(directory: Path) -> dict:
    path = Path(directory) / CONFIG_JSON
    hf = read_json_object(path, "the file is damaged")
    missing = [key for key in _SHAPE_KEYS if key not in hf]
    if "n_positions" not in hf and "n_ctx" not in hf:
        missing.append("n_positions")
    if missing:  # HF would fill in GPT-2 124M's values, which the weights then contradict key by key
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; is it a GPT-2 config.json?")
    return hf


_SHAPE_KEYS = ("vocab_size", "n_embd", "n_layer", "n_head")  # with n_positions (or n_ctx): the model's shape


def read_json_object(path: Path, fix: str) -> dict:
    """A JSON file that must hold an object, refused in one line naming it when it does not (not UTF-8, not
    JSON, nested too deeply for the decoder, an array), `fix` saying what to do."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is not UTF-8 text; {fix}") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); {fix}") from None
    except RecursionError:
        raise CheckpointError(f"{path} is nested too deeply to be read as JSON; {fix}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} holds a JSON {type(value).__name__}, not an object; {fix}")
    return value


def read_index(path: Path) -> list[str]:
    """The shard file names of a sharded safetensors index (`weight_map`: tensor name -> file name)."""
    weight_map = read_json_object(path, "the file is damaged").get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise CheckpointError(f"{path} has no weight_map (tensor name -> shard file); the index is damaged")
    shards = sorted(set(weight_map.values()))
    for shard in shards:  # a name, not a path: an index must not point outside its directory
        if Path(shard).name != shard or shard in ("", ".", ".."):
            raise CheckpointError(f"{path} names shard {shard!r}, which is not a file name in its directory")
    return shards


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
        config = GPTConfig(
            block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
            vocab_size=hf.get("vocab_size", 50257),
            n_layer=hf.get("n_layer", 12),
            n_head=hf.get("n_head", 12),
            n_embd=n_embd,
            layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-5)),
        )
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"config.json describes an impossible model: {e}") from None
    return config


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
        tensors = {}
        for shard in read_index(directory / SAFETENSORS_INDEX):
            tensors.update(_read_safetensors(directory / shard))
        return tensors
    if (directory / PYTORCH_BIN).exists():
        path = directory / PYTORCH_BIN
        try:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # weights_only refuses pickled code; a truncated zip fails too
            raise CheckpointError(f"cannot read {path}: {first_line(e)}") from None
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
        raise CheckpointError(f"cannot read {path}: {first_line(e)}; the file is truncated or corrupt") from None


def check_before_building(directory, config: GPTConfig) -> None:
    """What config.json asks for, checked before a model is built from it: its shape against the weights' header
    (safetensors keeps every tensor's name, shape and dtype there: no tensor is read), then the weights' size
    against the memory available. A config.json with n_layer = 100000 is one line at once, not minutes of
    building a model and gigabytes of memory before the weights say "missing keys"."""
    from gpt2lab.runtime import memory

    header = _safetensors_header(Path(directory))
    if header is not None:
        _check_shape(config, {name: shape for name, (shape, _) in header.items()}, directory)
        weight_bytes = sum(size for _, size in header.values())
    else:  # pytorch_model.bin has no header to read without unpickling it: count float32 parameters
        block, root = memory.block_and_root_params(config)
        weight_bytes = 4 * (config.n_layer * block + root)
    needed = weight_bytes + memory.inference_bytes(config, rows=1, tokens=config.block_size, scored=1)
    available = memory.available_bytes("cpu")  # weights are read into CPU memory first, on every device
    if available is not None and needed > available:
        raise memory.MemoryLimitError(
            "config.json", f"of {directory} describes a model that would need ~{memory.format_bytes(needed)} to "
                           f"load, more than the {memory.format_bytes(available)} available")


_DTYPE_BYTES = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "U8": 1, "I8": 1, "BOOL": 1}


def _safetensors_header(directory: Path) -> dict[str, tuple[tuple, int]] | None:
    """name -> (shape, bytes) of every tensor in the directory's safetensors file(s), from their headers alone;
    None for pytorch_model.bin weights."""
    from safetensors import safe_open

    if (directory / SAFETENSORS).exists():
        paths = [directory / SAFETENSORS]
    elif (directory / SAFETENSORS_INDEX).exists():
        paths = [directory / shard for shard in read_index(directory / SAFETENSORS_INDEX)]
    else:
        return None
    header = {}
    for path in paths:
        if not path.exists():
            raise CheckpointError(f"{path} is missing (listed in {SAFETENSORS_INDEX})")
        try:
            with safe_open(path, framework="pt") as f:
                for name in f.keys():
                    tensor = f.get_slice(name)
                    shape = tuple(tensor.get_shape())
                    header[name] = shape, math.prod(shape) * _DTYPE_BYTES.get(tensor.get_dtype(), 4)
        except Exception as e:  # SafetensorError for a truncated or corrupt header
            raise CheckpointError(f"cannot read {path}: {first_line(e)}; the file is truncated or corrupt") from None
    return header


def _check_shape(config: GPTConfig, shapes: dict[str, tuple], where) -> None:
    """config.json's depth, vocabulary, width and context against the weights' shapes (HF's optional
    `transformer.` prefix dropped). The key-by-key check of every tensor follows when they are read."""
    shapes = {name.removeprefix("transformer."): shape for name, shape in shapes.items()}
    layers = {int(name.split(".")[1]) for name in shapes if name.startswith("h.") and name.split(".")[1].isdigit()}
    if layers and max(layers) + 1 != config.n_layer:
        raise CheckpointError(f"{where}: config.json says n_layer = {config.n_layer} but the weights hold "
                              f"{max(layers) + 1} layers; the weights and config.json do not belong together")
    for name, implied in (("wte.weight", (config.vocab_size, config.n_embd)),
                          ("wpe.weight", (config.block_size, config.n_embd))):
        if name in shapes and shapes[name] != implied:
            raise CheckpointError(f"{where}: transformer.{name} has shape {shapes[name]} but config.json implies "
                                  f"{implied}; the weights and config.json do not belong together")


def read_state_dict(directory, expected_shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """The weights of an HF GPT-2 directory under our names, checked against `expected_shapes` (name -> shape,
    in model order: what the model built from its config.json holds)."""
    return state_dict_from_hf(read_weights(directory), expected_shapes, where=directory)


def state_dict_from_hf(hf: dict[str, torch.Tensor], expected: dict[str, tuple], where="checkpoint") -> dict:
    """Map HF GPT-2 tensors onto our parameter names, checking every key and shape against `expected`."""
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


def _some(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


def state_dict_to_hf(state_dict: dict) -> dict[str, torch.Tensor]:
    """Our parameters (a model's state_dict) under HF names, lm_head left out (tied to wte)."""
    hf = {}
    for name, tensor in state_dict.items():
        if name == "lm_head.weight":
            continue  # HF re-ties it to transformer.wte.weight; safetensors cannot store shared storage
        hf[name] = tensor.detach().contiguous().cpu()
    return hf


def save_model(model, directory) -> Path:
    """Write `model.safetensors`, the tokenizer files and `config.json` (HF GPT-2 format), each atomically.

    config.json goes last: it is what marks a directory as a model (`resolve_model_dir`, a run's checkpoint
    listing), so a save interrupted into a fresh directory never looks complete.
    """
    model = getattr(model, "_orig_mod", model)  # a torch.compile'd model: save the module underneath
    model = getattr(model, "module", model)  # a DDP-wrapped model
    return save_state_dict(model.state_dict(), model.config, directory)


def save_state_dict(state_dict: dict, config: GPTConfig, directory) -> Path:
    """`save_model` for weights that are not one module's (the whole of a sharded model, gathered by rank 0)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"cannot save to {directory}: it is a file, not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / SAFETENSORS) as tmp:
        save_file(state_dict_to_hf(state_dict), tmp, metadata={"format": "pt"})
    _save_tokenizer_files(config, directory)
    write_config(config, directory, dtype=state_dict["transformer.wte.weight"].dtype)
    return directory


def write_config(config: GPTConfig, directory, dtype=torch.float32) -> None:
    """config.json, written last by every writer: a directory that has it is complete."""
    hf = config_to_hf(config)
    hf["dtype"] = str(dtype).removeprefix("torch.")
    atomic_write_text(Path(directory) / CONFIG_JSON, json.dumps(hf, indent=2) + "\n")


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
