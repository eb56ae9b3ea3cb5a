"""TAPAS as flax.nnx modules: a BERT encoder whose embeddings add seven token types (the table's
structure), and the table question-answering heads (cell selection, column selection,
aggregation).

Names follow transformers' TapasForQuestionAnswering so that the conversion table reads like its
state dict: tapas.embeddings.{word_embeddings, position_embeddings, token_type_embeddings[i],
LayerNorm}, tapas.encoder.layer[i] (an EncoderLayer with BERT's post-LayerNorm:
polyformer.models.encoder), tapas.pooler, output_weights, output_bias, column_output_weights,
column_output_bias, aggregation_classifier.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from polyformer.attention.layer import logical
from polyformer.models import layers
from polyformer.models.encoder import (
    BaseModelOutputWithPooling,
    EncoderInit,
    EncoderLayer,
    layer_sizes,
)
from polyformer.models.inputs import check_ids
from polyformer.models.tapas import segments
from polyformer.models.tapas.config import TOKEN_TYPES, TapasConfig
from polyformer.models.tapas.loss import tapas_loss


@flax.struct.dataclass
class TableQuestionAnsweringOutput:
    """What TapasForQuestionAnswering returns; `loss`, `logits` and `logits_aggregation` are
    transformers' outputs, the other fields are the intermediate results the loss needs.

    Attributes:
      logits: float32 `[batch, length]`, each token's cell-selection logit as transformers
        returns it: the mean over the token's cell, plus LOG_ZERO (-10000) for cells outside
        the column the model selects (when `select_one_column`).
      logits_aggregation: float32 `[batch, num_aggregation_labels]` (None without aggregation).
      token_logits: float32 `[batch, length]`, per-token logits divided by the temperature,
        before averaging per cell and column masking.
      column_logits: float32 `[batch, max_num_columns]` (None unless `select_one_column`).
      loss: the scalar training loss, when labels were given.
      hidden_states, attentions: as BaseModelOutputWithPooling's, when asked for.
    """

    logits: jax.Array
    logits_aggregation: jax.Array | None
    token_logits: jax.Array
    column_logits: jax.Array | None
    loss: jax.Array | None = None
    hidden_states: tuple[jax.Array, ...] | None = None
    attentions: tuple[jax.Array, ...] | None = None


def position_ids_per_cell(token_type_ids: jax.Array, config: TapasConfig) -> jax.Array:
    """`[batch, length]` positions that restart at every cell (`reset_position_index_per_cell`):
    a token's position is its distance from its cell's first token, capped at
    max_position_embeddings - 1. Cells are (column, row) pairs of token_type_ids `[batch, length,
    7]`; the question, the separators and the padding form one cell (0, 0), so they keep their
    absolute positions."""
    num_columns, num_rows = config.type_vocab_sizes[1], config.type_vocab_sizes[2]
    cells = segments.product(token_type_ids[..., 1], token_type_ids[..., 2], num_rows)
    position = jnp.broadcast_to(jnp.arange(token_type_ids.shape[1]), cells.shape)
    first = segments.segment_min(position, cells, num_columns * num_rows)
    return jnp.minimum(config.max_position_embeddings - 1, position - segments.gather(first, cells))


class TapasEmbeddings(nnx.Module):
    """word + position + the seven token-type embeddings, then LayerNorm and dropout."""

    def __init__(self, config: TapasConfig, *, rngs: nnx.Rngs):
        c = config
        dtypes = dict(dtype=c.dtype, param_dtype=c.param_dtype)
        init = nnx.initializers.normal(c.initializer_range)
        self.word_embeddings = nnx.Embed(
            c.vocab_size,
            c.hidden_size,
            embedding_init=logical(init, ("vocab", "embed")),
            **dtypes,
            rngs=rngs,
        )
        self.position_embeddings = nnx.Embed(
            c.max_position_embeddings,
            c.hidden_size,
            embedding_init=logical(init, (None, "embed")),
            **dtypes,
            rngs=rngs,
        )
        self.token_type_embeddings = nnx.List(
            [
                nnx.Embed(
                    size,
                    c.hidden_size,
                    embedding_init=logical(init, (None, "embed")),
                    **dtypes,
                    rngs=rngs,
                )
                for size in c.type_vocab_sizes
            ]
        )
        self.LayerNorm = layers.layer_norm(c.hidden_size, c.layer_norm_eps, **dtypes, rngs=rngs)
        self.dropout = nnx.Dropout(c.hidden_dropout_prob)
        self.pad_token_id = c.pad_token_id

    def __call__(
        self,
        input_ids: jax.Array,
        token_type_ids: jax.Array,
        position_ids: jax.Array,
        rngs: nnx.Rngs | None,
    ) -> jax.Array:
        """input_ids, position_ids `[batch, length]`, token_type_ids `[batch, length, 7]` ->
        `[batch, length, hidden_size]`."""
        words = self.word_embeddings(input_ids)
        if self.pad_token_id is not None:
            # transformers' nn.Embedding(padding_idx=pad_token_id) gives the padding row no
            # gradient, so that the pad vector is never trained; its value is used as it is.
            padding = (input_ids == self.pad_token_id)[..., None]
            words = jnp.where(padding, jax.lax.stop_gradient(words), words)
        x = words + self.position_embeddings(position_ids)
        for i, table in enumerate(self.token_type_embeddings):
            x = x + table(token_type_ids[..., i])
        x = self.LayerNorm(x)
        return self.dropout(x, deterministic=rngs is None, rngs=rngs)


class TapasEncoder(nnx.Module):
    def __init__(self, config: TapasConfig, *, rngs: nnx.Rngs):
        c = config
        self.layer = layers.layer_stack(
            lambda rngs: EncoderLayer(
                **layer_sizes(c),
                kernel=c.kernel,
                dropout=c.hidden_dropout_prob,
                post_norm=True,
                init=EncoderInit.uniform(c.initializer_range),
                dtype=c.dtype,
                param_dtype=c.param_dtype,
                rngs=rngs,
            ),
            c.num_hidden_layers,
            scan=c.scan_layers,
            rngs=rngs,
        )


class TapasPooler(nnx.Module):
    """tanh(dense(x[:, 0])): the first ([CLS]) token's summary, `[batch, hidden_size]`."""

    def __init__(self, config: TapasConfig, *, rngs: nnx.Rngs):
        self.dense = layers.dense_head(config, config.hidden_size, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.tanh(self.dense(x[:, 0]))


def _check_inputs(config: TapasConfig, input_ids: jax.Array, token_type_ids: jax.Array | None):
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
    length = input_ids.shape[1]
    if length > config.max_position_embeddings:
        raise ValueError(
            f"{length} tokens do not fit: max_position_embeddings={config.max_position_embeddings}"
        )
    expected = (*input_ids.shape, len(TOKEN_TYPES))
    if token_type_ids is not None and tuple(token_type_ids.shape) != expected:
        raise ValueError(
            f"token_type_ids must be [batch, length, {len(TOKEN_TYPES)}] ({', '.join(TOKEN_TYPES)})"
            f" = {expected}, got shape {tuple(token_type_ids.shape)}"
        )
    check_token_ids(config, input_ids, token_type_ids)


def check_token_ids(config: TapasConfig, input_ids: jax.Array, token_type_ids: jax.Array | None):
    """Raises ValueError for input_ids `[batch, length]` outside the vocabulary or
    token_type_ids `[batch, length, 7]` outside their embedding tables (a row id past the
    model's rows, say): JAX would read NaN there (see `models.inputs.check_ids`)."""
    check_ids(input_ids, config.vocab_size, "input_ids")
    if token_type_ids is not None:
        for i, (name, size) in enumerate(zip(TOKEN_TYPES, config.type_vocab_sizes, strict=True)):
            check_ids(token_type_ids[..., i], size, f"token_type_ids[..., {i}] ({name})")


class TapasModel(nnx.Module):
    """The TAPAS encoder with its pooler (transformers' TapasModel).

    Built in evaluation mode; `model.train()` turns dropout on, and then every call needs
    `rngs=nnx.Rngs(dropout=...)`.
    """

    def __init__(self, config: TapasConfig, *, rngs: nnx.Rngs):
        self.config = dataclasses.replace(config, architectures=("TapasModel",))
        self.embeddings = TapasEmbeddings(config, rngs=rngs)
        self.encoder = TapasEncoder(config, rngs=rngs)
        self.pooler = TapasPooler(config, rngs=rngs)
        self.deterministic = True  # flipped by model.train() / model.eval()

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        *,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> BaseModelOutputWithPooling:
        """input_ids `[batch, length]`; attention_mask `[batch, length]`, 1 for real tokens
        (None: all real); token_type_ids `[batch, length, 7]` (None: zeros); position_ids
        `[batch | 1, length]` (None: per-cell positions when reset_position_index_per_cell,
        else 0..length-1). output_hidden_states, output_attentions: return the hidden states and
        attention probabilities (see BaseModelOutputWithPooling). rngs: needed in training mode, for
        dropout."""
        _check_inputs(self.config, input_ids, token_type_ids)
        rngs = layers.training_rngs(self, rngs)
        if token_type_ids is None:
            token_type_ids = jnp.zeros((*input_ids.shape, len(TOKEN_TYPES)), jnp.int32)
        if position_ids is None:
            if self.config.reset_position_index_per_cell:
                position_ids = position_ids_per_cell(token_type_ids, self.config)
            else:
                position_ids = jnp.arange(input_ids.shape[1])[None]
        mask = None if attention_mask is None else attention_mask.astype(bool)
        x = self.embeddings(input_ids, token_type_ids, position_ids, rngs)
        x, hidden, attentions = layers.run_layers(
            self.encoder.layer,
            x,
            self.config.remat,
            mask,
            rngs,
            output_attentions=output_attentions,
        )
        pooled = self.pooler(x)
        return BaseModelOutputWithPooling.of(x, pooled, hidden, attentions, output_hidden_states)


def _head_vector(size: int, std: float | None, param_dtype: Any, rngs: nnx.Rngs) -> nnx.Param:
    """A `[size]` weight of a logit head: normal(std), or zeros when std is None."""
    init = nnx.initializers.zeros_init() if std is None else nnx.initializers.normal(std)
    return nnx.Param(logical(init, ("embed",))(rngs.params(), (size,), param_dtype))


def _head_bias(param_dtype: Any) -> nnx.Param:
    """A 0-d bias, zero as transformers initialises it."""
    return nnx.Param(jnp.zeros((), param_dtype))


class TapasForQuestionAnswering(nnx.Module):
    """TAPAS with the table question-answering heads (transformers' TapasForQuestionAnswering).

    Cell selection: a logit per token (`output_weights`, `output_bias`, over `temperature`),
    averaged over each cell (row, column). With `select_one_column`, a logit per column
    (`column_output_weights`, `column_output_bias`, averaged per cell then per column) picks one
    column and every cell outside it is ruled out. Aggregation (when `num_aggregation_labels` >
    0): `aggregation_classifier` on the pooled output. Given `labels`, the output carries the
    TAPAS loss (polyformer.models.tapas.loss).

    Built in evaluation mode; `model.train()` turns dropout on, and then every call needs
    `rngs=nnx.Rngs(dropout=...)`.
    """

    def __init__(self, config: TapasConfig, *, rngs: nnx.Rngs):
        c = self.config = dataclasses.replace(config, architectures=("TapasForQuestionAnswering",))
        self.tapas = TapasModel(c, rngs=rngs)
        self.dropout = nnx.Dropout(c.hidden_dropout_prob)
        std = None if c.init_cell_selection_weights_to_zero else c.initializer_range
        self.output_weights = _head_vector(c.hidden_size, std, c.param_dtype, rngs)
        self.output_bias = _head_bias(c.param_dtype)
        self.column_output_weights = _head_vector(c.hidden_size, std, c.param_dtype, rngs)
        self.column_output_bias = _head_bias(c.param_dtype)
        if c.num_aggregation_labels > 0:
            self.aggregation_classifier = layers.dense_head(
                c, c.num_aggregation_labels, rngs, dtype=jnp.float32
            )
        self.deterministic = True

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        *,
        table_mask: jax.Array | None = None,
        labels: jax.Array | None = None,
        aggregation_labels: jax.Array | None = None,
        float_answer: jax.Array | None = None,
        numeric_values: jax.Array | None = None,
        numeric_values_scale: jax.Array | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> TableQuestionAnsweringOutput:
        """input_ids `[batch, length]`; attention_mask `[batch, length]`; token_type_ids
        `[batch, length, 7]`; position_ids `[batch | 1, length]`: as TapasModel. The other
        arguments are the loss's (polyformer.models.tapas.loss.tapas_loss), computed when
        `labels` `[batch, length]` are given. rngs: needed in training mode (dropout, and the
        Gumbel samples of configs that use them)."""
        c = self.config
        rngs = layers.training_rngs(self, rngs)
        if token_type_ids is None:
            token_type_ids = jnp.zeros((*input_ids.shape, len(TOKEN_TYPES)), jnp.int32)
        out = self.tapas(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            rngs=rngs,
        )
        sequence = self.dropout(
            out.last_hidden_state, deterministic=rngs is None, rngs=rngs
        ).astype(jnp.float32)
        num_cells = c.max_num_rows * c.max_num_columns
        cells, _ = segments.cell_indices(token_type_ids, c.max_num_rows, c.max_num_columns)
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.float32)
        mask_per_cell = segments.cell_mask(attention_mask, cells, num_cells)

        token_logits = (sequence @ self.output_weights[...] + self.output_bias[...]) / c.temperature
        column_logits = None
        if c.select_one_column:
            column_token_logits = sequence @ self.column_output_weights[...]
            column_logits = segments.column_logits(
                column_token_logits + self.column_output_bias[...],
                cells,
                mask_per_cell,
                c.max_num_rows,
                c.max_num_columns,
                c.allow_empty_column_selection,
            )
            logits = segments.single_column_logits(
                token_logits, column_logits, cells, mask_per_cell, c.max_num_rows, c.max_num_columns
            )
        elif c.average_logits_per_cell:
            logits = segments.gather(segments.segment_mean(token_logits, cells, num_cells), cells)
        else:
            logits = token_logits
        logits_aggregation = None
        if c.num_aggregation_labels > 0:
            logits_aggregation = self.aggregation_classifier(out.pooler_output.astype(jnp.float32))

        loss = None
        if labels is not None:
            loss = tapas_loss(
                c,
                token_logits=token_logits,
                column_logits=column_logits,
                logits_aggregation=logits_aggregation,
                token_type_ids=token_type_ids,
                labels=labels,
                attention_mask=attention_mask,
                table_mask=table_mask,
                aggregation_labels=aggregation_labels,
                float_answer=float_answer,
                numeric_values=numeric_values,
                numeric_values_scale=numeric_values_scale,
                rng=None if rngs is None else rngs.dropout(),
            )
        return TableQuestionAnsweringOutput(
            logits=logits,
            logits_aggregation=logits_aggregation,
            token_logits=token_logits,
            column_logits=column_logits,
            loss=loss,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )


def build(config: TapasConfig, *, rngs: nnx.Rngs) -> TapasModel | TapasForQuestionAnswering:
    """The model of `config.architecture` (what config.json's `architectures` names)."""
    if config.architecture == "TapasModel":
        return TapasModel(config, rngs=rngs)
    return TapasForQuestionAnswering(config, rngs=rngs)
