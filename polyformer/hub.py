"""`from_pretrained` / `save_pretrained`: Hugging Face checkpoint directories <-> nnx models.

A directory holds `config.json` (its `model_type` picks the family) and the weights as
`model.safetensors`, sharded safetensors (`model.safetensors.index.json`) or `pytorch_model.bin`
(sharded too), looked for in that order. Pickled PyTorch files are read with
`torch.load(weights_only=True)`, so a checkpoint never runs code; torch is imported only for them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import safetensors.flax
from flax import nnx
from safetensors import SafetensorError

from polyformer.attention import AttentionKernel
from polyformer.models import clip, convert, gpt, tapas, vit, wav2vec2
from polyformer.models.convert import CheckpointError, CheckpointMismatchError

CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
TORCH = "pytorch_model.bin"


@dataclasses.dataclass(frozen=True)
class Family:
    """What loading and saving need to know about one model family.

    Attributes:
      config: the config class; `config.from_hf(dict)` reads config.json, `config.to_hf()` writes
        it, `config.model_type` is the key in FAMILIES.
      build: `build(config, rngs=...)` makes the model.
      table: `table(config)` is the conversion table for that configuration.
    """

    config: Any
    build: Callable[..., nnx.Module]
    table: Callable[[Any], convert.Table]


FAMILIES: dict[str, Family] = {
    "gpt2": Family(gpt.GPT2Config, gpt.GPT2LMHeadModel, gpt.convert.table),
    "vit": Family(vit.ViTConfig, vit.build, vit.convert.table),
    "clip": Family(clip.CLIPConfig, clip.CLIPModel, clip.convert.table),
    "wav2vec2": Family(wav2vec2.Wav2Vec2Config, wav2vec2.build, wav2vec2.convert.table),
    "tapas": Family(tapas.TapasConfig, tapas.build, tapas.convert.table),
}


def _family(model_type: Any, source: str) -> Family:
    if model_type not in FAMILIES:
        raise CheckpointError(
            f"{source}: model_type {model_type!r} is not supported; known: {', '.join(FAMILIES)}"
        )
    return FAMILIES[model_type]


def _read_config(directory: Path) -> dict[str, Any]:
    file = directory / CONFIG
    if not file.is_file():
        raise FileNotFoundError(f"no {CONFIG} in {directory}: not a checkpoint directory")
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is not valid JSON: {e}") from e


def _read_safetensors(file: Path) -> dict[str, jax.Array]:
    try:
        return safetensors.flax.load_file(file)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file} is truncated or not a safetensors file: {e}") from e


def _read_torch(file: Path) -> dict[str, jax.Array]:
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


def _read_sharded(
    index: Path, read: Callable[[Path], dict[str, jax.Array]]
) -> dict[str, jax.Array]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index} is not a shard index (JSON with a weight_map): {e}") from e
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
        (SAFETENSORS, _read_safetensors),
        (SAFETENSORS + ".index.json", lambda f: _read_sharded(f, _read_safetensors)),
        (TORCH, _read_torch),
        (TORCH + ".index.json", lambda f: _read_sharded(f, _read_torch)),
    )
    for name, read in formats:
        if (directory / name).is_file():
            return read(directory / name), str(directory / name)
    names = ", ".join(name for name, _ in formats)
    raise FileNotFoundError(f"no weights in {directory}: looked for {names}")


def from_pretrained(
    path: str | os.PathLike,
    *,
    dtype: Any = None,
    attention: AttentionKernel | None = None,
) -> nnx.Module:
    """Loads a checkpoint directory as transformers' or our `save_pretrained` writes it.

    Args:
      path: the directory.
      dtype: computation dtype (default float32); parameters keep the config's param_dtype
        (float32), whatever dtype the checkpoint stores.
      attention: the kernel of every attention layer (default: the config's, Dense).

    Returns the model of config.json's `model_type`, in evaluation mode, its parameters equal to
    the checkpoint's. Raises FileNotFoundError for a missing file, CheckpointError (a ValueError)
    for an unknown model_type or an unreadable file, CheckpointMismatchError listing every
    missing, unexpected and wrong-shape tensor.
    """
    directory = Path(path)
    hf_config = _read_config(directory)
    family = _family(hf_config.get("model_type"), str(directory / CONFIG))
    config = family.config.from_hf(hf_config)
    overrides = {"dtype": dtype, "attention": attention}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    tensors, source = read_weights(directory)
    # Build without computing a random initialisation that the checkpoint would overwrite.
    abstract = nnx.eval_shape(lambda: family.build(config, rngs=nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise ValueError(f"{type(abstract).__name__} has state besides parameters; cannot load it")
    flat = dict(nnx.to_flat_state(params))
    shapes = {key: var.get_value() for key, var in flat.items()}
    values = convert.load(family.table(config), tensors, shapes, source)
    for key, var in flat.items():
        var.set_value(values[key])
    return nnx.merge(graphdef, nnx.from_flat_state(flat), rest)


def save_pretrained(model: nnx.Module, path: str | os.PathLike) -> None:
    """Writes `config.json` and `model.safetensors` into directory `path` (created if needed),
    named and laid out as transformers' own class for the model (e.g. GPT2LMHeadModel) saves
    them, so that its `from_pretrained` loads them."""
    config = model.config
    family = _family(config.model_type, type(model).__name__)
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    params = {key: var.get_value() for key, var in flat}
    tensors = convert.save(family.table(config), params)
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    safetensors.flax.save_file(tensors, str(directory / SAFETENSORS), metadata={"format": "pt"})
    (directory / CONFIG).write_text(json.dumps(config.to_hf(), indent=2, sort_keys=True) + "\n")


__all__ = [
    "FAMILIES",
    "CheckpointError",
    "CheckpointMismatchError",
    "Family",
    "from_pretrained",
    "read_weights",
    "save_pretrained",
]
