"""Wav2Vec2's conversion table: transformers' Wav2Vec2ForCTC / Wav2Vec2Model state dict <-> our
nnx state.

torch Conv1d weights `[out, in, kernel]` become channels-last kernels `[kernel, in, out]`; Linear
weights are transposed. The positional conv's weight-norm factors are kept as they are (g `[1, 1,
K]`, v `[hidden, hidden / groups, K]`), so a checkpoint round-trips bit for bit. They are read
under both names PyTorch has used: `weight_g` / `weight_v` (torch.nn.utils.weight_norm, older
checkpoints, the official ones among them) and `parametrizations.weight.original0` / `original1`
(the parametrization API, which transformers 5 writes and which `save` writes).
"""

from __future__ import annotations

from polyformer.models import convert
from polyformer.models.convert import conv, copy, layer_norm, linear
from polyformer.models.wav2vec2.config import Wav2Vec2Config

BASE = "wav2vec2."  # Wav2Vec2ForCTC's prefix; Wav2Vec2Model checkpoints have none
POS_CONV = "encoder.pos_conv_embed.conv."
# (name written, older name also read) of the weight-norm magnitude g and direction v.
WEIGHT_NORM = {
    "weight_g": ("parametrizations.weight.original0", "weight_g"),
    "weight_v": ("parametrizations.weight.original1", "weight_v"),
}


def _layer(base: str, i: int, ours: tuple) -> list[convert.Entry]:
    hf, ours = f"{base}encoder.layers.{i}.", (*ours, "encoder", "layers", i)
    projections = (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value"), ("out_proj", "out"))
    entries = []
    for theirs, mine in projections:
        entries += linear(f"{hf}attention.{theirs}", (*ours, "attention", mine))
    for dense in ("intermediate_dense", "output_dense"):
        entries += linear(f"{hf}feed_forward.{dense}", (*ours, "feed_forward", dense))
    for norm in ("layer_norm", "final_layer_norm"):
        entries += layer_norm(hf + norm, (*ours, norm))
    return entries


def _base_model(config: Wav2Vec2Config, base: str, ours: tuple) -> list[convert.Entry]:
    """Entries of Wav2Vec2Model's tensors, named `{base}...`, filling `(*ours, ...)`."""
    entries = []
    for i in range(config.num_feat_extract_layers):
        hf, path = f"{base}feature_extractor.conv_layers.{i}.", (*ours, "feature_extractor",
                                                                  "conv_layers", i)  # fmt: skip
        entries += conv(hf + "conv", (*path, "conv"), bias=config.conv_bias)
        if config.feat_extract_norm == "layer" or i == 0:
            entries += layer_norm(hf + "layer_norm", (*path, "layer_norm"))
    projection = (*ours, "feature_projection")
    entries += layer_norm(base + "feature_projection.layer_norm", (*projection, "layer_norm"))
    entries += linear(base + "feature_projection.projection", (*projection, "projection"))
    if config.has_masked_spec_embed:
        entries.append(copy(base + "masked_spec_embed", (*ours, "masked_spec_embed")))
    pos = (*ours, "encoder", "pos_conv_embed")
    entries += [copy(base + POS_CONV + WEIGHT_NORM[p][0], (*pos, p)) for p in WEIGHT_NORM]
    entries.append(copy(base + POS_CONV + "bias", (*pos, "bias")))
    entries += layer_norm(base + "encoder.layer_norm", (*ours, "encoder", "layer_norm"))
    for i in range(config.num_hidden_layers):
        entries += _layer(base, i, ours)
    return entries


def table(config: Wav2Vec2Config) -> convert.Table:
    """The table for one configuration and head (config.architectures)."""
    base = "" if config.architecture == "Wav2Vec2Model" else BASE
    aliases = tuple(
        (base + POS_CONV + old, base + POS_CONV + new) for new, old in WEIGHT_NORM.values()
    )
    # A checkpoint whose config later turned SpecAugment off may still hold the vector; HF
    # drops it with a warning, and so do we (silently: it takes no part in the forward pass).
    ignored = frozenset(() if config.has_masked_spec_embed else (base + "masked_spec_embed",))
    entries = _base_model(config, base, ("wav2vec2",) if base else ())
    if base:
        entries += linear("lm_head", ("lm_head",))
    return convert.Table(tuple(entries), optional_prefix=base, ignored=ignored, aliases=aliases)
