"""TAPAS's conversion table: transformers' TapasForQuestionAnswering / TapasModel state dicts <->
our nnx state, and `from_bert`: a TAPAS model whose encoder starts from a BERT checkpoint.

Every torch nn.Linear weight ([out, in]) is transposed; embeddings, LayerNorms, the 1-D head
weights (`output_weights`, `column_output_weights`) and the 0-d head biases are copied as they
are. BERT's fused names are transformers' own: `attention.self.{query,key,value}`,
`attention.output.{dense,LayerNorm}`, `intermediate.dense`, `output.{dense,LayerNorm}`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
from flax import nnx

from polyformer.checkpoint_io import CheckpointError, read_config, read_weights
from polyformer.models import convert
from polyformer.models.convert import copy, embedding, layer_norm, linear
from polyformer.models.tapas.config import TapasConfig
from polyformer.models.tapas.model import build

BASE = "tapas."  # TapasForQuestionAnswering's prefix; TapasModel checkpoints have none
# TF-era checkpoints name LayerNorm parameters gamma and beta.
_LEGACY_LAYER_NORM = {".LayerNorm.gamma": ".LayerNorm.weight", ".LayerNorm.beta": ".LayerNorm.bias"}


def _layer(hf: str, ours: tuple) -> list[convert.Entry]:
    """A BERT layer onto an EncoderLayer with post_norm (polyformer.models.encoder)."""
    attention = (*ours, "self_attn")
    return [
        *linear(hf + "attention.self.query", (*attention, "query")),
        *linear(hf + "attention.self.key", (*attention, "key")),
        *linear(hf + "attention.self.value", (*attention, "value")),
        *linear(hf + "attention.output.dense", (*attention, "out")),
        *layer_norm(hf + "attention.output.LayerNorm", (*ours, "layer_norm1")),
        *linear(hf + "intermediate.dense", (*ours, "mlp", "fc1")),
        *linear(hf + "output.dense", (*ours, "mlp", "fc2")),
        *layer_norm(hf + "output.LayerNorm", (*ours, "layer_norm2")),
    ]


def encoder_entries(
    config: TapasConfig, hf_prefix: str, ours: tuple, *, token_types: bool = True
) -> list[convert.Entry]:
    """The encoder and pooler: HF names under `hf_prefix`, our paths under `ours`; without the
    seven token-type tables when not `token_types` (a BERT checkpoint has one of its own)."""
    hf, embeddings = hf_prefix + "embeddings.", (*ours, "embeddings")
    entries = [
        *embedding(hf + "word_embeddings", (*embeddings, "word_embeddings")),
        *embedding(hf + "position_embeddings", (*embeddings, "position_embeddings")),
        *layer_norm(hf + "LayerNorm", (*embeddings, "LayerNorm")),
        *(
            entry
            for i in range(config.num_hidden_layers)
            for entry in _layer(f"{hf_prefix}encoder.layer.{i}.", (*ours, "encoder", "layer", i))
        ),
        *linear(hf_prefix + "pooler.dense", (*ours, "pooler", "dense")),
    ]  # fmt: skip
    if token_types:
        for i in range(len(config.type_vocab_sizes)):
            entries += embedding(
                f"{hf}token_type_embeddings_{i}", (*embeddings, "token_type_embeddings", i)
            )
    return entries


def _with_legacy_names(entries: list[convert.Entry]) -> convert.Table:
    """A table that also reads TF-era checkpoints' `LayerNorm.gamma/beta` names."""
    aliases = tuple(
        (entry.hf[: -len(new)] + old, entry.hf)
        for entry in entries
        for old, new in _LEGACY_LAYER_NORM.items()
        if entry.hf.endswith(new)
    )
    return convert.Table(tuple(entries), aliases=aliases)


def table(config: TapasConfig) -> convert.Table:
    """The table of `config.architecture` (TapasForQuestionAnswering or TapasModel)."""
    if config.architecture == "TapasModel":
        return _with_legacy_names(encoder_entries(config, "", ()))
    entries = [
        *encoder_entries(config, BASE, ("tapas",)),
        copy("output_weights", ("output_weights",)),
        copy("output_bias", ("output_bias",)),
        copy("column_output_weights", ("column_output_weights",)),
        copy("column_output_bias", ("column_output_bias",)),
    ]
    if config.num_aggregation_labels > 0:
        entries += linear("aggregation_classifier", ("aggregation_classifier",))
    return _with_legacy_names(entries)


# BERT config.json fields that carry over to the TAPAS encoder.
_BERT_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob",
    "max_position_embeddings", "initializer_range", "layer_norm_eps", "pad_token_id",
)  # fmt: skip
# Encoder fields that must agree between a given TapasConfig and the BERT checkpoint.
_ENCODER_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "hidden_act", "layer_norm_eps",
)  # fmt: skip
# BERT pre-training heads and buffers: no TAPAS parameter takes them.
_BERT_UNUSED = ("cls.", "embeddings.position_ids")


def _bert_tensors(tensors: dict[str, Any]) -> dict[str, Any]:
    """A BERT state dict without the `bert.` prefix, its pre-training heads and buffers, with
    TF-era `LayerNorm.gamma/beta` renamed to `weight/bias`."""
    out = {}
    for name, value in tensors.items():
        name = name.removeprefix("bert.")
        if name.startswith(_BERT_UNUSED):
            continue
        for old, new in _LEGACY_LAYER_NORM.items():
            if name.endswith(old):
                name = name[: -len(old)] + new
        out[name] = value
    return out


def from_bert(path: str | os.PathLike, config: TapasConfig | None = None) -> nnx.Module:
    """A TAPAS model whose encoder, embeddings and pooler are a BERT checkpoint's.

    Args:
      path: a checkpoint directory with `model_type` "bert" (BertModel, BertForPreTraining,
        BertForMaskedLM, ... as transformers saves them; pre-training heads are dropped).
      config: the TAPAS configuration (its head, loss and table fields); its encoder fields
        must equal the checkpoint's, except that vocab_size may be larger: a TapasTokenizer on
        BERT's vocab.txt adds [EMPTY] after it, so `vocab_size=len(tokenizer)`. None:
        `TapasConfig.base()` (TapasModel) with the checkpoint's encoder fields.

    Returns `config.architecture`'s model, in evaluation mode. BERT's token-type table (2 rows)
    fills the first rows of the segment table (3 rows), whose other rows are zero; the six
    other token-type tables keep their random initialisation except row 0, which is zero, so on
    token_type_ids that set only the segment channel the encoder computes what BERT computes on
    those token type ids. Position embeddings are BERT's
    first `config.max_position_embeddings` rows; word embeddings beyond BERT's vocabulary start as
    the mean of BERT's (as transformers' resize_token_embeddings centres them). The TAPAS heads
    keep their initialisation.
    """
    directory = Path(path)
    hf_config = read_config(directory)
    if hf_config.get("model_type") != "bert":
        raise CheckpointError(
            f"{directory}: from_bert needs a BERT checkpoint, config.json has model_type "
            f"{hf_config.get('model_type')!r}"
        )
    bert = {k: hf_config[k] for k in _BERT_FIELDS if k in hf_config}
    if config is None:
        config = TapasConfig.base(**bert)
    words = bert.get("vocab_size", config.vocab_size)
    wrong = [
        f"{k}: config {getattr(config, k)!r}, BERT {bert[k]!r}"
        for k in _ENCODER_FIELDS
        if k in bert
        and getattr(config, k) != bert[k]
        and not (k == "vocab_size" and config.vocab_size > words)
    ]
    if wrong:
        raise ValueError(
            f"config does not match the BERT encoder in {directory}: {'; '.join(wrong)}"
        )
    positions = bert.get("max_position_embeddings", 512)
    if config.max_position_embeddings > positions:
        raise ValueError(
            f"config.max_position_embeddings={config.max_position_embeddings} exceeds the "
            f"{positions} position embeddings of the BERT checkpoint in {directory}"
        )

    model = build(config, rngs=nnx.Rngs(0))
    ours = () if config.architecture == "TapasModel" else ("tapas",)
    embeddings = (*ours, "embeddings")
    segment = (*embeddings, "token_type_embeddings", 0, "embedding")
    bert_types = bert.get("type_vocab_size", 2)
    if bert_types > config.type_vocab_sizes[0]:
        raise ValueError(
            f"the BERT checkpoint has {bert_types} token types, more than the "
            f"{config.type_vocab_sizes[0]} segment ids of type_vocab_sizes[0]"
        )

    def pad_rows(x, rows):
        return jnp.zeros((rows, x.shape[1]), x.dtype).at[: x.shape[0]].set(x)

    position = (*embeddings, "position_embeddings", "embedding")
    word = (*embeddings, "word_embeddings", "embedding")
    entries = [
        e
        for e in encoder_entries(config, "", ours, token_types=False)
        if e.ours not in ((position,), (word,))
    ]
    # These entries are only read: their to_hf gives the shape that load expects of the BERT
    # tensor (a TAPAS model is never saved as BERT).
    entries += [
        convert.Entry(
            "embeddings.token_type_embeddings.weight",
            (segment,),
            lambda x: (pad_rows(x, config.type_vocab_sizes[0]),),
            lambda x: x[:bert_types],
        ),
        convert.Entry(
            "embeddings.word_embeddings.weight",
            (word,),
            lambda x: (
                jnp.concatenate(
                    [x, jnp.broadcast_to(x.mean(0), (config.vocab_size - words, x.shape[1]))]
                ),
            ),
            lambda x: x[:words],
        ),
        convert.Entry(
            "embeddings.position_embeddings.weight",
            (position,),
            lambda x: (x[: config.max_position_embeddings],),
            lambda x: jnp.zeros((positions, x.shape[1]), x.dtype),
        ),
    ]
    # The six table-structure tables BERT lacks keep their random initialisation (as
    # transformers initialises them) but for row 0, every channel's id on question and padding
    # tokens: so on segment-only token types the encoder computes what BERT computes, while rows,
    # columns and ranks are told apart from the first fine-tuning step (tables of zeros take
    # hundreds of steps to grow). The segment rows past BERT's are zero (`pad_rows`).
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    types = (*embeddings, "token_type_embeddings")
    for key, var in flat.items():
        if key[: len(types)] == types and key[len(types)] != 0:
            var.set_value(var.get_value().at[0].set(0))
    nnx.update(model, nnx.from_flat_state(flat))
    tensors, source = read_weights(directory)
    return convert.load_into(model, convert.Table(tuple(entries)), _bert_tensors(tensors), source)
