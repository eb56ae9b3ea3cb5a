"""Reading Hugging Face checkpoint directories: `config.json` and the weights.

A directory holds `config.json` and the weights as `model.safetensors`, sharded safetensors
(`model.safetensors.index.json`) or `pytorch_model.bin` (sharded too), looked for in that order.
Pickled PyTorch files are read with `torch.load(weights_only=True)`, so a checkpoint never runs
code; torch is imported only for them. This module knows no model family: `polyformer.hub` and
the families' own loaders (`tapas.from_bert`) build on it. `resolve` turns a Hugging Face repo
id ("openai-community/gpt2") into its snapshot directory in the Hugging Face cache.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import safetensors.flax
from safetensors import SafetensorError

CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
TORCH = "pytorch_model.bin"


# What a checkpoint directory may need from a hub repo: config, tokenizer and processor files,
# and the weights, safetensors first (PyTorch's files only when a repo has no safetensors).
HUB_FILES = ("*.json", "*.txt", "*.model", "*.safetensors")
HUB_TORCH_FILES = (TORCH, TORCH + ".index.json", "pytorch_model-*.bin")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: corrupt, truncated, refused or of an unknown type."""


def _is_repo_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def resolve(path_or_id: str | os.PathLike) -> Path:
    """The checkpoint directory `path_or_id` names: itself when it exists or is not a Hugging
    Face repo id, else the repo's snapshot in the Hugging Face cache, as transformers finds it
    (`huggingface_hub.snapshot_download`: downloaded when missing, cache only when
    HF_HUB_OFFLINE=1; HF_HUB_CACHE sets the cache).

    Raises FileNotFoundError naming the id and the cache when the repo can be neither found in
    the cache nor downloaded."""
    name = os.fspath(path_or_id)
    if os.path.exists(name) or not _is_repo_id(name):
        return Path(name)
    from huggingface_hub import constants, snapshot_download

    try:
        snapshot = Path(snapshot_download(name, allow_patterns=list(HUB_FILES)))
        if not any((snapshot / f).is_file() for f in (SAFETENSORS, SAFETENSORS + ".index.json")):
            snapshot = Path(snapshot_download(name, allow_patterns=list(HUB_TORCH_FILES)))
    except OSError as e:  # huggingface_hub's not-found, HTTP and offline errors are OSErrors
        offline = " (offline: HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        raise FileNotFoundError(
            f"{name!r} is neither a directory nor a model in the Hugging Face cache "
            f"{constants.HF_HUB_CACHE}{offline}: {type(e).__name__}"
        ) from e
    return snapshot


def read_json(directory: str | os.PathLike, name: str) -> dict[str, Any]:
    """The JSON object in file `name` of a checkpoint directory (config.json,
    preprocessor_config.json, ...).

    Raises FileNotFoundError without the file, CheckpointError (a ValueError) naming the file
    when it is not a JSON object."""
    file = Path(directory) / name
    if not file.is_file():
        raise FileNotFoundError(f"no {name} in {directory}")
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise CheckpointError(f"{file} holds a {type(value).__name__}, not a JSON object")
    return value


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The config.json dict of a checkpoint directory (see read_json)."""
    return read_json(directory, CONFIG)


def read_safetensors(file: Path) -> dict[str, jax.Array]:
    try:
        return safetensors.flax.load_file(file)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file} is truncated or not a safetensors file: {e}") from e


def read_torch(file: Path) -> dict[str, jax.Array]:
    """A pickled PyTorch state dict, refusing any object other than tensors."""
    import torch  # only this format needs torch

    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{file} holds objects other than tensors; refusing to unpickle them, as that could "
            f"run code: {e}"
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{file} is truncated or not a PyTorch checkpoint: {e}") from e
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise CheckpointError(f"{file} is not a state dict (a dict of tensor names to tensors)")
    # numpy has no bfloat16; widening to float32 is exact and the loader casts to param_dtype.
    return {
        name: jnp.asarray((t.float() if t.dtype == torch.bfloat16 else t).numpy())
        for name, t in state.items()
    }


def read_sharded(index: Path, read: Callable[[Path], dict[str, jax.Array]]) -> dict[str, jax.Array]:
    """Every shard an `*.index.json` lists, each read with `read`, merged."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index} is not a shard index (JSON with a weight_map): {e}") from e
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise CheckpointError(
            f"{index}: weight_map must map tensor names to shard file names, got {weight_map!r:.80}"
        )
    tensors = {}
    for shard in sorted(set(weight_map.values())):
        file = index.parent / shard
        if not file.is_file():
            raise FileNotFoundError(f"{file}, a shard listed in {index}, does not exist")
        tensors.update(read(file))
    return tensors


def read_weights(directory: str | os.PathLike) -> tuple[dict[str, jax.Array], str]:
    """All tensors of a checkpoint directory, HF name -> array, and the file they came from."""
    directory = Path(directory)
    formats = (
        (SAFETENSORS, read_safetensors),
        (SAFETENSORS + ".index.json", lambda f: read_sharded(f, read_safetensors)),
        (TORCH, read_torch),
        (TORCH + ".index.json", lambda f: read_sharded(f, read_torch)),
    )
    for name, read in formats:
        if (directory / name).is_file():
            return read(directory / name), str(directory / name)
    names = ", ".join(name for name, _ in formats)
    raise FileNotFoundError(f"no weights in {directory}: looked for {names}")
