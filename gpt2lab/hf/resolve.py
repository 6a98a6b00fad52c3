"""What a MODEL names: the one resolver from a MODEL string to a local directory in Hugging Face GPT-2 format,
used by every command (through `GPT.from_pretrained`), by sampling to read config.json first, and by the planner.

A MODEL is one of
  - a released GPT-2 name (`gpt2`, `gpt2-medium`, `gpt2-large`, `gpt2-xl`) or any Hugging Face hub id,
    downloaded with huggingface_hub into the standard HF cache (so a model a user already has is reused);
  - a local Hugging Face directory: `config.json` + weights (`gpt2lab.hf.format` reads them);
  - a gpt2lab run directory: its newest complete checkpoint (`RUN/checkpoints/step_XXXXXXXX/`).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from gpt2lab.errors import ModelNotFoundError, first_line
from gpt2lab.hf.format import CONFIG_JSON, PYTORCH_BIN, SAFETENSORS, SAFETENSORS_INDEX, read_index
from gpt2lab.storage.run_directory import CHECKPOINTS_DIR, RunDirectory

HUB_ALIASES = {name: f"openai-community/{name}" for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}


def resolve_model_dir(source, offline: bool = False) -> Path:
    """Turn a MODEL string into a local directory holding `config.json` and weights. `offline`: a hub id is looked
    up in the local HF cache only, without any request (what a dry run may do)."""
    path = Path(os.path.expanduser(str(source)))
    if _is_symlink_loop(path):
        raise ModelNotFoundError(f"{path} is a symlink loop (following it never reaches a file or directory); "
                                 f"point it at a model directory")
    if path.is_dir():
        run = RunDirectory(path)
        if run.checkpoints_dir.is_dir() and not (path / CONFIG_JSON).exists():
            return _latest_checkpoint(run)
        if not (path / CONFIG_JSON).exists():
            raise ModelNotFoundError(
                f"{path} has no config.json: expected a Hugging Face GPT-2 directory "
                f"(config.json + {SAFETENSORS}) or a gpt2lab run directory (with {CHECKPOINTS_DIR}/)"
            )
        return path
    if path.exists():
        raise ModelNotFoundError(f"{path} is a file; pass the directory that holds config.json and the weights")
    if _looks_like_path(str(source)):
        raise ModelNotFoundError(f"no such directory: {path}")
    return _download_from_hub(HUB_ALIASES.get(str(source), str(source)), offline)


def _is_symlink_loop(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ELOOP
    return False


def _looks_like_path(source: str) -> bool:
    # A hub id is "name" or "owner/name"; anything else with a slash, or starting like a path, is a path.
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source


def _latest_checkpoint(run: RunDirectory) -> Path:
    checkpoint = run.latest_checkpoint()
    if checkpoint is None:
        raise ModelNotFoundError(
            f"run directory {run.path} has no complete checkpoint yet in {run.checkpoints_dir}"
        )
    if not any((checkpoint / name).exists() for name in (SAFETENSORS, SAFETENSORS_INDEX, PYTORCH_BIN)):
        raise ModelNotFoundError(  # FSDP writes the whole model with its final checkpoint only
            f"the newest checkpoint of {run.path}, {checkpoint.name}, is sharded (FSDP) and holds no Hugging Face "
            f"weights yet; write them with `gpt2lab export {run.path} --out DIR`, or pass an earlier checkpoint")
    return checkpoint


def _download_from_hub(repo_id: str, offline: bool = False) -> Path:
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
        online = not (offline or constants.HF_HUB_OFFLINE) and _hub_answers(repo_id)
        return _fetch_model_files(repo_id, local_only=not online)
    except HFValidationError:
        raise _not_a_repository(repo_id) from None
    except LocalEntryNotFoundError:
        if offline:
            why, fix = "this command downloads nothing", f"fetch it first (gpt2lab inspect {repo_id})"
        elif constants.HF_HUB_OFFLINE:
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
        raise ModelNotFoundError(f"the Hugging Face Hub refused {repo_id!r}: {first_line(e)}") from None
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
        for shard in read_index(weights_path):
            fetch(shard)
    if config_path.parent != weights_path.parent:  # cannot happen in the HF cache layout, but be explicit
        raise ModelNotFoundError(f"hub files of {repo_id!r} landed in different directories")
    return config_path.parent
