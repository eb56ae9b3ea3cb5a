"""The TAPAS fine-tuning loss as a pure JAX function (transformers' TapasForQuestionAnswering
loss, term for term).

Three parts, per example, averaged over the batch:
* cell selection: a Bernoulli log-likelihood of the answer cells. With `select_one_column` it is
  hierarchical: a categorical over columns (the column holding most answer tokens, or column 0
  for "no cell") plus the Bernoulli likelihood of the cells of that column only.
* aggregation: with strong supervision (`use_answer_as_supervision` false, e.g. WikiSQL-
  supervised) a cross-entropy against the given aggregation labels. With weak supervision (WTQ)
  examples whose answer is a number that must be computed get -log P(some aggregation), the
  others a cross-entropy towards "no aggregation"; which is which (the aggregate mask) is decided
  from the float answer, the labels and the model's own aggregation probabilities.
* answer (weak supervision only): a Huber loss between the float answer and the expected result
  of SUM/AVERAGE/COUNT over the cell probabilities, weighted by the aggregation probabilities.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from polyformer.models.tapas import segments
from polyformer.models.tapas.config import TapasConfig
from polyformer.models.tapas.segments import EPSILON


def _bernoulli_nll(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32))


def single_column_selection_loss(
    token_logits: jax.Array,
    column_logits: jax.Array,
    labels: jax.Array,
    cells: jax.Array,
    columns: jax.Array,
    mask_per_cell: jax.Array,
    max_num_rows: int,
    max_num_columns: int,
) -> jax.Array:
    """Per-example `[batch]` loss of selecting the answer cells of one column: -log P(column)
    plus the mean Bernoulli negative log-likelihood of that column's cells (only the column term
    when no cell is an answer: the target is then column 0).

    token_logits, labels (0/1), cells, columns `[batch, length]`; column_logits `[batch,
    max_num_columns]`; mask_per_cell `[batch, cells]`.
    """
    num_cells = max_num_rows * max_num_columns
    labels_per_column = segments.segment_sum(labels.astype(jnp.float32), columns, max_num_columns)
    no_cell_selected = jnp.max(labels_per_column, axis=-1) == 0
    column_label = jnp.where(no_cell_selected, 0, jnp.argmax(labels_per_column, axis=-1))
    column_loss = optax.softmax_cross_entropy_with_integer_labels(column_logits, column_label)

    logits_per_cell = segments.segment_mean(token_logits, cells, num_cells)
    labels_per_cell = segments.segment_max(labels, cells, num_cells)
    weight = segments.in_column(column_label, max_num_rows, max_num_columns) * mask_per_cell
    cell_nll = _bernoulli_nll(logits_per_cell, labels_per_cell)
    cell_loss = jnp.sum(cell_nll * weight, axis=1) / (jnp.sum(weight, axis=1) + EPSILON)
    return column_loss + jnp.where(no_cell_selected, 0.0, cell_loss)


def aggregate_mask(
    float_answer: jax.Array,
    logits_aggregation: jax.Array,
    labels: jax.Array,
    cell_selection_preference: float,
) -> jax.Array:
    """float32 `[batch]`, 1 for the examples whose answer must be computed by an aggregation.

    An example aggregates when its float_answer `[batch]` is a number (not NaN), unless the model
    predicts cell selection (total probability of the aggregations <= cell_selection_preference)
    and some cell is labelled as the answer (the number appears in the table). No gradient.
    """
    wants_number = ~jnp.isnan(float_answer)
    aggregation_mass = jnp.sum(jax.nn.softmax(logits_aggregation, axis=-1)[:, 1:], axis=1)
    selects_cells = aggregation_mass <= cell_selection_preference
    has_cells = jnp.sum(labels, axis=1) > 0
    mask = jnp.where(selects_cells & has_cells, False, wants_number).astype(jnp.float32)
    return jax.lax.stop_gradient(mask)


def aggregation_loss(
    logits_aggregation: jax.Array,
    mask: jax.Array | None,
    aggregation_labels: jax.Array,
    config: TapasConfig,
) -> jax.Array:
    """Per-example `[batch]` aggregation loss: the cross-entropy against aggregation_labels
    `[batch]` (strong supervision), or with weak supervision (`mask` from aggregate_mask) the
    cross-entropy towards "no aggregation" for cell-selection examples plus -log P(some
    aggregation) for the others."""
    if not config.use_answer_as_supervision:
        loss = optax.softmax_cross_entropy_with_integer_labels(
            logits_aggregation, aggregation_labels
        )
        return config.aggregation_loss_weight * loss
    log_probs = jax.nn.log_softmax(logits_aggregation, axis=-1)
    known = -log_probs[:, 0] * (1 - mask)
    aggregation_mass = jnp.sum(jnp.exp(log_probs)[:, 1:], axis=1)
    unknown = -jnp.log(aggregation_mass) * mask
    return config.aggregation_loss_weight * (known + unknown)


def _relaxed_bernoulli(rng: jax.Array, logits: jax.Array, temperature: float) -> jax.Array:
    """torch's RelaxedBernoulli(temperature, logits).sample(): sigmoid((logits + logistic
    noise) / temperature)."""
    u = jax.random.uniform(rng, logits.shape, minval=jnp.finfo(jnp.float32).tiny, maxval=1.0)
    return jax.nn.sigmoid((logits + jnp.log(u) - jnp.log1p(-u)) / temperature)


def expected_result(
    cell_logits: jax.Array,
    numeric_values: jax.Array,
    numeric_values_scale: jax.Array,
    table_mask: jax.Array,
    logits_aggregation: jax.Array,
    config: TapasConfig,
    rng: jax.Array | None = None,
) -> jax.Array:
    """`[batch]`: SUM, AVERAGE and COUNT of the numeric cells, each cell weighted by its
    selection probability, mixed by the probabilities of the three aggregations.

    cell_logits `[batch, length]` (the logits transformers returns); numeric_values `[batch,
    length]` (NaN for tokens that are no number); numeric_values_scale `[batch, length]` (tokens
    per cell, so each cell counts once); table_mask `[batch, length]` (1 for table cells, not the
    header); logits_aggregation `[batch, num_aggregation_labels]` with "no aggregation" first.
    rng: for the Gumbel relaxations (`use_gumbel_for_cells`/`_for_aggregation`); their samples
    carry no gradient, as torch's `.sample()` does in transformers.
    """
    if config.use_gumbel_for_cells or config.use_gumbel_for_aggregation:
        if rng is None:
            raise ValueError("use_gumbel_for_cells/_for_aggregation sample: pass rng")
        cell_rng, aggregation_rng = jax.random.split(rng)
    if config.use_gumbel_for_cells:
        # transformers samples at logits * temperature, and divides by the temperature again.
        probs = _relaxed_bernoulli(cell_rng, cell_logits * config.temperature, config.temperature)
        probs = jax.lax.stop_gradient(probs)
    else:
        probs = jax.nn.sigmoid(cell_logits)
    scaled = probs / numeric_values_scale * table_mask
    values = jnp.where(jnp.isnan(numeric_values), 0.0, numeric_values)
    count = jnp.sum(scaled, axis=1)
    total = jnp.sum(scaled * values, axis=1)
    if config.average_approximation_function == "ratio":
        average = total / (count + EPSILON)
    else:
        # E[1 / (1 + number of other selected cells)], to first or second order (TAPAS paper,
        # appendix D).
        others_plus_one = jnp.sum(scaled, axis=1, keepdims=True) - scaled + 1
        multiplier = 1 / others_plus_one
        if config.average_approximation_function == "second_order":
            pointwise_var = scaled * (1 - scaled)
            var = jnp.sum(pointwise_var, axis=1, keepdims=True) - pointwise_var
            multiplier = (var / jnp.square(others_plus_one) + 1) / others_plus_one
        average = jnp.sum(values * scaled * multiplier, axis=1)
    operator_logits = logits_aggregation[:, 1:]
    if config.use_gumbel_for_aggregation:
        gumbel = jax.random.gumbel(aggregation_rng, operator_logits.shape)
        operator_logits = jax.lax.stop_gradient(operator_logits + gumbel)
    operator_probs = jax.nn.softmax(operator_logits / config.aggregation_temperature, axis=-1)
    results = jnp.stack([total, average, count], axis=1)
    return jnp.sum(results * operator_probs, axis=1)


def huber(x: jax.Array, target: jax.Array, delta: float) -> jax.Array:
    errors = jnp.abs(x - target)
    return jnp.where(errors < delta, 0.5 * errors**2, errors * delta - 0.5 * delta**2)


def answer_loss(
    float_answer: jax.Array,
    mask: jax.Array,
    expected: jax.Array,
    config: TapasConfig,
) -> tuple[jax.Array, jax.Array]:
    """(the weighted Huber loss `[batch]` between expected `[batch]` and float_answer `[batch]`
    on aggregation examples (`mask`), and `[batch]` 0 where it exceeds answer_loss_cutoff (such
    examples get no aggregation loss at all), else 1)."""
    answer = jnp.where(jnp.isnan(float_answer), 0.0, float_answer)
    if config.use_normalized_answer_loss:
        normalizer = jnp.maximum(jnp.abs(expected), jnp.abs(answer)) + EPSILON
        normalizer = jax.lax.stop_gradient(normalizer)
        loss = huber(expected / normalizer * mask, answer / normalizer * mask, 1.0)
    else:
        if config.huber_loss_delta is None:
            raise ValueError("the answer loss needs huber_loss_delta in the config (e.g. 0.121194)")
        loss = huber(expected * mask, answer * mask, config.huber_loss_delta)
    if config.answer_loss_cutoff is None:
        keep = jnp.ones_like(loss)
    else:
        keep = (loss <= config.answer_loss_cutoff).astype(jnp.float32)
    return config.answer_loss_importance * loss * mask, keep


def tapas_loss(
    config: TapasConfig,
    *,
    token_logits: jax.Array,
    column_logits: jax.Array | None,
    logits_aggregation: jax.Array | None,
    token_type_ids: jax.Array,
    labels: jax.Array,
    attention_mask: jax.Array | None = None,
    table_mask: jax.Array | None = None,
    aggregation_labels: jax.Array | None = None,
    float_answer: jax.Array | None = None,
    numeric_values: jax.Array | None = None,
    numeric_values_scale: jax.Array | None = None,
    rng: jax.Array | None = None,
) -> jax.Array:
    """The scalar TAPAS training loss, as transformers' TapasForQuestionAnswering computes it.

    Args:
      config: the model's config (its supervision mode and loss hyperparameters).
      token_logits: `[batch, length]` per-token cell logits over the temperature, as
        TableQuestionAnsweringOutput.token_logits; column_logits `[batch, max_num_columns]`
        (needed when `select_one_column`); logits_aggregation `[batch, num_aggregation_labels]`.
      token_type_ids: `[batch, length, 7]`, for the cells and columns of the tokens.
      labels: `[batch, length]` 1 for tokens of answer cells.
      attention_mask: `[batch, length]` 1 for real tokens (None: all).
      table_mask: `[batch, length]` 1 for table cells (None: tokens with row id > 0).
      aggregation_labels: `[batch]` ints, needed with strong supervision (aggregation heads and
        not `use_answer_as_supervision`).
      float_answer: `[batch]` the numeric answer (NaN if none), needed with weak supervision.
      numeric_values, numeric_values_scale: `[batch, length]`, needed with weak supervision.
      rng: for the Gumbel options only.
    """
    c = config
    num_cells = c.max_num_rows * c.max_num_columns
    cells, columns = segments.cell_indices(token_type_ids, c.max_num_rows, c.max_num_columns)
    if attention_mask is None:
        attention_mask = jnp.ones(labels.shape, jnp.float32)
    input_mask = attention_mask.astype(jnp.float32)
    if table_mask is None:
        table_mask = token_type_ids[..., 2] > 0
    table_mask = table_mask.astype(jnp.float32)
    mask_per_cell = segments.cell_mask(input_mask, cells, num_cells)
    aggregates = c.num_aggregation_labels > 0
    weakly_supervised = aggregates and bool(c.use_answer_as_supervision)

    mask = None
    if weakly_supervised:
        if float_answer is None:
            raise ValueError("weak supervision (use_answer_as_supervision) needs float_answer")
        if c.cell_selection_preference is None:
            raise ValueError("weak supervision needs cell_selection_preference in the config")
        mask = aggregate_mask(float_answer, logits_aggregation, labels, c.cell_selection_preference)

    logits = token_logits
    if c.average_logits_per_cell:
        logits = segments.gather(segments.segment_mean(logits, cells, num_cells), cells)
    if c.select_one_column:
        if column_logits is None:
            raise ValueError("select_one_column needs column_logits")
        selection = single_column_selection_loss(
            logits, column_logits, labels, cells, columns, mask_per_cell,
            c.max_num_rows, c.max_num_columns,
        )  # fmt: skip
        logits = segments.single_column_logits(
            logits, column_logits, cells, mask_per_cell, c.max_num_rows, c.max_num_columns
        )
    else:
        weight = jnp.where(labels == 0, 1.0, c.positive_label_weight)
        per_token = _bernoulli_nll(logits, labels) * weight
        selection = jnp.sum(per_token * input_mask, axis=1) / (
            jnp.sum(input_mask, axis=1) + EPSILON
        )

    total = jnp.zeros((), jnp.float32)
    if not c.disable_per_token_loss:
        total += jnp.mean(selection if mask is None else selection * (1.0 - mask))
    if aggregates:
        if not weakly_supervised and aggregation_labels is None:
            raise ValueError("strong supervision of the aggregation needs aggregation_labels")
        per_example = aggregation_loss(logits_aggregation, mask, aggregation_labels, c)
        if weakly_supervised:
            if numeric_values is None or numeric_values_scale is None:
                raise ValueError(
                    "weak supervision needs numeric_values and numeric_values_scale for the "
                    "answer loss"
                )
            expected = expected_result(
                logits, numeric_values, numeric_values_scale, table_mask, logits_aggregation, c, rng
            )
            answer, keep = answer_loss(float_answer, mask, expected, c)
            per_example = (per_example + answer) * keep
        total += jnp.mean(per_example)
    return total
