"""CLIP's conversion table: transformers' CLIPModel state dict <-> our nnx state.

Linear weights are transposed ([out, in] -> [in, out]), the patch Conv2d weight becomes
nnx.Conv's [ph, pw, channels, hidden]; `class_embedding` [hidden], the position tables
[positions, hidden] and the 0-d `logit_scale` keep their shapes. Files written by transformers
before 4.31 also hold the `position_ids` buffers of both towers: accepted and dropped.
"""

from __future__ import annotations

from polyformer.models import convert
from polyformer.models.clip.config import CLIPConfig
from polyformer.models.convert import conv, copy, embedding, encoder_layer, layer_norm, linear

# Our encoder-layer modules (polyformer.models.encoder.EncoderLayer) -> CLIP's HF names.
LAYER_NAMES = {
    ("layer_norm1",): "layer_norm1",
    ("self_attn", "query"): "self_attn.q_proj",
    ("self_attn", "key"): "self_attn.k_proj",
    ("self_attn", "value"): "self_attn.v_proj",
    ("self_attn", "out"): "self_attn.out_proj",
    ("layer_norm2",): "layer_norm2",
    ("mlp", "fc1"): "mlp.fc1",
    ("mlp", "fc2"): "mlp.fc2",
}


def _encoder(hf: str, ours: tuple, num_layers: int) -> list[convert.Entry]:
    return [
        entry
        for i in range(num_layers)
        for entry in encoder_layer(
            f"{hf}encoder.layers.{i}.", (*ours, "encoder", "layers", i), LAYER_NAMES
        )  # fmt: skip
    ]


def table(config: CLIPConfig) -> convert.Table:
    """The table for one configuration (its depth in each tower)."""
    text, vision = "text_model.", "vision_model."
    emb = ("vision_model", "embeddings")
    entries = [
        *embedding(text + "embeddings.token_embedding",
                   ("text_model", "embeddings", "token_embedding")),
        *embedding(text + "embeddings.position_embedding",
                   ("text_model", "embeddings", "position_embedding")),
        *_encoder(text, ("text_model",), config.text_config.num_hidden_layers),
        *layer_norm(text + "final_layer_norm", ("text_model", "final_layer_norm")),
        copy(vision + "embeddings.class_embedding", (*emb, "class_embedding")),
        *conv(vision + "embeddings.patch_embedding", (*emb, "patch_embedding"), bias=False),
        copy(vision + "embeddings.position_embedding.weight", (*emb, "position_embedding")),
        *layer_norm(vision + "pre_layrnorm", ("vision_model", "pre_layrnorm")),
        *_encoder(vision, ("vision_model",), config.vision_config.num_hidden_layers),
        *layer_norm(vision + "post_layernorm", ("vision_model", "post_layernorm")),
        *linear("visual_projection", ("visual_projection",), bias=False),
        *linear("text_projection", ("text_projection",), bias=False),
        copy("logit_scale", ("logit_scale",)),
    ]  # fmt: skip
    buffers = frozenset(f"{tower}embeddings.position_ids" for tower in (text, vision))
    return convert.Table(tuple(entries), ignored=buffers)
