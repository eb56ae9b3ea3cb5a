"""`from_pretrained` / `save_pretrained`: Hugging Face checkpoint directories <-> nnx models.

config.json's `model_type` picks the family in `polyformer.models.FAMILIES`; reading the files
is `polyformer.checkpoint_io`'s, converting the tensors the family's table's
(`polyformer.models.convert`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import safetensors.flax
from flax import nnx

from polyformer.attention import AttentionKernel
from polyformer.checkpoint_io import (
    CONFIG,
    SAFETENSORS,
    CheckpointError,
    read_config,
    read_weights,
    resolve,
)
from polyformer.models import FAMILIES, Family, convert
from polyformer.models.convert import CheckpointMismatchError


def family_of(model_type: Any, source: str) -> Family:
    """The family of config.json's `model_type`; CheckpointError naming `source` if unknown."""
    if model_type not in FAMILIES:
        raise CheckpointError(
            f"{source}: model_type {model_type!r} is not supported; known: {', '.join(FAMILIES)}"
        )
    return FAMILIES[model_type]


def from_pretrained(
    path: str | os.PathLike,
    *,
    dtype: Any = None,
    attention: AttentionKernel | None = None,
    scan_layers: bool | None = None,
) -> nnx.Module:
    """Loads a checkpoint directory as transformers' or our `save_pretrained` writes it.

    Args:
      path: the directory, or a Hugging Face repo id ("openai-community/gpt2") found in or
        downloaded to the Hugging Face cache (`checkpoint_io.resolve`).
      dtype: computation dtype (default float32); parameters keep the config's param_dtype
        (float32), whatever dtype the checkpoint stores.
      attention: the kernel of every attention layer (default: the config's, Dense).
      scan_layers: the layers as one scanned module with stacked parameters
        (ModelConfig.scan_layers; default False); the checkpoint is the same either way.

    Returns the model of config.json's `model_type`, in evaluation mode, its parameters equal to
    the checkpoint's. Raises FileNotFoundError for a missing file, CheckpointError (a ValueError)
    for an unknown model_type or an unreadable file, CheckpointMismatchError listing every
    missing, unexpected and wrong-shape tensor.
    """
    directory = resolve(path)
    hf_config = read_config(directory)
    family = family_of(hf_config.get("model_type"), str(directory / CONFIG))
    config = family.config.from_hf(hf_config)
    overrides = {"dtype": dtype, "attention": attention, "scan_layers": scan_layers}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    tensors, source = read_weights(directory)
    # Build without computing a random initialisation that the checkpoint would overwrite.
    abstract = nnx.eval_shape(lambda: family.build(config, rngs=nnx.Rngs(0)))
    return convert.load_into(abstract, family.table(config), tensors, source)


def save_pretrained(model: nnx.Module, path: str | os.PathLike) -> None:
    """Writes `config.json` and `model.safetensors` into directory `path` (created if needed),
    named and laid out as transformers' own class for the model (e.g. GPT2LMHeadModel) saves
    them, so that its `from_pretrained` loads them.

    Raises ValueError for a model that still has LoRA adapters (`nnx.LoRAParam` variables),
    which transformers' class has no place for."""
    if jax.tree.leaves(nnx.state(model, nnx.LoRAParam)):
        raise ValueError(
            f"this {type(model).__name__} still has LoRA adapters: merge it first (lora.merge) "
            "or save the adapter with lora.save_adapter"
        )
    config = model.config
    family = family_of(config.model_type, type(model).__name__)
    tensors = convert.save(family.table(config), convert.model_params(model))
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    safetensors.flax.save_file(tensors, str(directory / SAFETENSORS), metadata={"format": "pt"})
    (directory / CONFIG).write_text(json.dumps(config.to_hf(), indent=2, sort_keys=True) + "\n")


__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "family_of",
    "from_pretrained",
    "save_pretrained",
]
