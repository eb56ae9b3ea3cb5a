"""ViT's conversion tables: transformers' ViTForImageClassification / ViTModel state dicts <->
our nnx state.

torch nn.Linear weights are [out, in] (transposed to nnx's [in, out]); the patch Conv2d weight
[hidden, channels, ph, pw] becomes nnx.Conv's [ph, pw, channels, hidden]; `cls_token`
[1, 1, hidden] and `position_embeddings` [1, 1 + patches, hidden] lose their leading 1s.
transformers 5 renamed ViT's modules (q_proj, fc1, ...) but still reads and writes these names.
`vit_body`'s encoder entries come from `convert.encoder_layer`, which CLIP's table uses too.
"""

from __future__ import annotations

from polyformer.models import convert
from polyformer.models.convert import Path, conv, encoder_layer, layer_norm, linear, reshape
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
        *conv(f"{hf}embeddings.patch_embeddings.projection", (*emb, "patch_embedding")),
        *layers,
        *layer_norm(f"{hf}layernorm", (*ours, "layernorm")),
    ]


def table(config: ViTConfig) -> convert.Table:
    """The table for one configuration and class (config.architecture)."""
    if config.architecture == "ViTModel":
        entries = vit_body(config, "", ())
        if config.add_pooling_layer:
            entries += linear("pooler.dense", ("pooler", "dense"))
        return convert.Table(tuple(entries))
    entries = [*vit_body(config, BASE, ("vit",)), *linear("classifier", ("classifier",))]
    return convert.Table(tuple(entries))
