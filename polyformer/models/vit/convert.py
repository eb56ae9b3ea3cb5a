"""ViT's conversion tables: transformers' ViTForImageClassification / ViTModel state dicts <->
our nnx state.

torch nn.Linear weights are [out, in] (transposed to nnx's [in, out]); the patch Conv2d weight
[hidden, channels, ph, pw] becomes nnx.Conv's [ph, pw, channels, hidden]; `cls_token`
[1, 1, hidden] and `position_embeddings` [1, 1 + patches, hidden] lose their leading 1s.
transformers 5 renamed ViT's modules (q_proj, fc1, ...) but still reads and writes these names.
The helpers here serve CLIP's tables too.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp

from polyformer.models import convert
from polyformer.models.convert import Path, copy, transpose
from polyformer.models.vit.config import ViTConfig

BASE = "vit."  # ViTForImageClassification's prefix; ViTModel checkpoints have none

# Our encoder-layer modules (polyformer.models.encoder.EncoderLayer) -> ViT's HF names.
LAYER_NAMES = {
    ("layer_norm1",): "layernorm_before",
    ("self_attn", "query"): "attention.attention.query",
    ("self_attn", "key"): "attention.attention.key",
    ("self_attn", "value"): "attention.attention.value",
    ("self_attn", "out"): "attention.output.dense",
    ("layer_norm2",): "layernorm_after",
    ("mlp", "fc1"): "intermediate.dense",
    ("mlp", "fc2"): "output.dense",
}


def reshape(
    hf: str, path: Path, hf_shape: tuple[int, ...], shape: tuple[int, ...]
) -> convert.Entry:
    """A tensor stored with a different shape (same element order) on each side."""
    return convert.Entry(hf, (path,), lambda x: (x.reshape(shape),), lambda x: x.reshape(hf_shape))


def conv(hf: str, path: Path) -> convert.Entry:
    """torch Conv2d weight [out, in, kh, kw] <-> nnx.Conv kernel [kh, kw, in, out]."""
    return convert.Entry(
        hf,
        (path,),
        lambda x: (jnp.transpose(x, (2, 3, 1, 0)),),
        lambda x: jnp.transpose(x, (3, 2, 0, 1)),
    )


def layer_norm(hf: str, ours: Path) -> list[convert.Entry]:
    return [copy(f"{hf}.weight", (*ours, "scale")), copy(f"{hf}.bias", (*ours, "bias"))]


def dense(hf: str, ours: Path, bias: bool = True) -> list[convert.Entry]:
    """A torch nn.Linear <-> an nnx.Linear."""
    entries = [transpose(f"{hf}.weight", (*ours, "kernel"))]
    return entries + [copy(f"{hf}.bias", (*ours, "bias"))] if bias else entries


def encoder_layer(
    hf: str, ours: Path, names: Mapping[tuple[str, ...], str], qkv_bias: bool = True
) -> list[convert.Entry]:
    """One EncoderLayer: `hf` its HF prefix (ending in "."), `ours` its state path, `names` our
    sub-modules -> HF's."""
    entries = []
    for module, name in names.items():
        if module[0].startswith("layer_norm"):
            entries += layer_norm(hf + name, (*ours, *module))
        else:
            has_bias = qkv_bias or module[-1] not in ("query", "key", "value")
            entries += dense(hf + name, (*ours, *module), bias=has_bias)
    return entries


def vit_body(config: ViTConfig, hf: str, ours: Path) -> list[convert.Entry]:
    """Embeddings, encoder and final layernorm (transformers' ViTModel minus its pooler)."""
    c = config
    hidden, positions = c.hidden_size, 1 + c.image_grid_size[0] * c.image_grid_size[1]
    emb = (*ours, "embeddings")
    layers = (
        entry
        for i in range(c.num_hidden_layers)
        for entry in encoder_layer(
            f"{hf}encoder.layer.{i}.", (*ours, "encoder", "layers", i), LAYER_NAMES, c.qkv_bias
        )
    )
    return [
        reshape(f"{hf}embeddings.cls_token", (*emb, "class_embedding"), (1, 1, hidden), (hidden,)),
        reshape(
            f"{hf}embeddings.position_embeddings",
            (*emb, "position_embedding"),
            (1, positions, hidden),
            (positions, hidden),
        ),
        conv(
            f"{hf}embeddings.patch_embeddings.projection.weight",
            (*emb, "patch_embedding", "kernel"),
        ),
        copy(f"{hf}embeddings.patch_embeddings.projection.bias", (*emb, "patch_embedding", "bias")),
        *layers,
        *layer_norm(f"{hf}layernorm", (*ours, "layernorm")),
    ]


def table(config: ViTConfig) -> convert.Table:
    """The table for one configuration and class (config.architecture)."""
    if config.architecture == "ViTModel":
        entries = vit_body(config, "", ())
        if config.add_pooling_layer:
            entries += dense("pooler.dense", ("pooler", "dense"))
        return convert.Table(tuple(entries))
    entries = [*vit_body(config, BASE, ("vit",)), *dense("classifier", ("classifier",))]
    return convert.Table(tuple(entries))
