"""Segmented reductions over the tokens of a table: per cell, per column.

A segment index `ids [batch, length]` (ints in [0, num_segments)) groups each example's tokens;
the reductions return one value per segment `[batch, num_segments]` (0 for an empty segment) and
`gather` sends per-segment values back to the tokens. Segments of different examples are always
distinct. These are transformers' IndexMap/ProductIndexMap/reduce_*/gather for TAPAS, written as
`jax.ops.segment_*` over each example.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _reduce(op, values: jax.Array, ids: jax.Array, num_segments: int) -> jax.Array:
    per_example = jax.vmap(lambda v, i: op(v, i, num_segments=num_segments))
    return per_example(values, ids)


def segment_sum(values: jax.Array, ids: jax.Array, num_segments: int) -> jax.Array:
    """values, ids `[batch, length]` -> sums `[batch, num_segments]`."""
    return _reduce(jax.ops.segment_sum, values, ids, num_segments)


def segment_mean(values: jax.Array, ids: jax.Array, num_segments: int) -> jax.Array:
    """values, ids `[batch, length]` -> means `[batch, num_segments]` (0 for empty segments)."""
    sums = segment_sum(values, ids, num_segments)
    counts = segment_sum(jnp.ones_like(values), ids, num_segments)
    return jnp.where(counts > 0, sums / jnp.maximum(counts, 1), 0)


def segment_max(values: jax.Array, ids: jax.Array, num_segments: int) -> jax.Array:
    """values, ids `[batch, length]` -> maxima `[batch, num_segments]` (0 for empty segments)."""
    counts = segment_sum(jnp.ones(ids.shape, jnp.int32), ids, num_segments)
    return jnp.where(counts > 0, _reduce(jax.ops.segment_max, values, ids, num_segments), 0)


def segment_min(values: jax.Array, ids: jax.Array, num_segments: int) -> jax.Array:
    """values, ids `[batch, length]` -> minima `[batch, num_segments]` (0 for empty segments)."""
    counts = segment_sum(jnp.ones(ids.shape, jnp.int32), ids, num_segments)
    return jnp.where(counts > 0, _reduce(jax.ops.segment_min, values, ids, num_segments), 0)


def gather(per_segment: jax.Array, ids: jax.Array) -> jax.Array:
    """per_segment `[batch, num_segments]`, ids `[batch, length]` -> `[batch, length]`: each
    token gets its segment's value."""
    return jnp.take_along_axis(per_segment, ids, axis=1)


def product(outer: jax.Array, inner: jax.Array, num_inner: int) -> jax.Array:
    """Segment ids of the pairs (outer, inner), e.g. (row, column) -> cell: outer * num_inner +
    inner, ints in [0, num_outer * num_inner)."""
    return outer * num_inner + inner


def cell_indices(
    token_type_ids: jax.Array, max_num_rows: int, max_num_columns: int
) -> tuple[jax.Array, jax.Array]:
    """The cell and the column of every token, as the TAPAS heads count them.

    token_type_ids `[batch, length, 7]` -> (cell ids in [0, max_num_rows * max_num_columns),
    column ids in [0, max_num_columns)), each `[batch, length]`. Row and column ids beyond the
    limits share the last row or column (as in transformers). Question tokens and padding are
    cell (0, 0); header tokens are row 0.
    """
    columns = jnp.minimum(token_type_ids[..., 1], max_num_columns - 1)
    rows = jnp.minimum(token_type_ids[..., 2], max_num_rows - 1)
    return product(rows, columns, max_num_columns), columns


def column_of_cell(max_num_rows: int, max_num_columns: int) -> jax.Array:
    """`[max_num_rows * max_num_columns]`: the column of each cell id made by `cell_indices`."""
    return jnp.arange(max_num_rows * max_num_columns) % max_num_columns


# What TAPAS adds to a logit to rule a cell or column out (transformers' CLOSE_ENOUGH_TO_LOG_ZERO).
LOG_ZERO = -10000.0
# Keeps divisions by a count of zero finite (transformers' EPSILON_ZERO_DIVISION).
EPSILON = 1e-10


def cell_mask(attention_mask: jax.Array, cells: jax.Array, num_cells: int) -> jax.Array:
    """float32 `[batch, num_cells]`: the mean of attention_mask `[batch, length]` over each cell
    (1 for a cell of real tokens, 0 for an absent one), as transformers computes it."""
    return segment_mean(attention_mask.astype(jnp.float32), cells, num_cells)


def column_logits(
    logits: jax.Array,
    cells: jax.Array,
    mask_per_cell: jax.Array,
    max_num_rows: int,
    max_num_columns: int,
    allow_empty_column_selection: bool,
) -> jax.Array:
    """Per-token column logits `[batch, length]` -> `[batch, max_num_columns]`: averaged per
    cell, then per column over its existing cells. Columns without cells get LOG_ZERO, and so
    does column 0 ("select no column") unless `allow_empty_column_selection`.

    cells `[batch, length]` and mask_per_cell `[batch, cells]` as `cell_indices`/`cell_mask`
    make them.
    """
    batch = logits.shape[0]
    grid = (batch, max_num_rows, max_num_columns)
    per_cell = segment_mean(logits, cells, max_num_rows * max_num_columns)
    # Cell ids are row * max_num_columns + column: a column's cells are one axis of the grid.
    totals = jnp.sum((per_cell * mask_per_cell).reshape(grid), axis=1)
    counts = jnp.sum(mask_per_cell.reshape(grid), axis=1)
    result = totals / (counts + EPSILON)
    column = jnp.arange(max_num_columns)
    absent = (counts < 0.5) & (column != 0)
    result = result + LOG_ZERO * absent.astype(jnp.float32)
    if not allow_empty_column_selection:
        result = result + LOG_ZERO * (column == 0).astype(jnp.float32)
    return result


def in_column(column: jax.Array, max_num_rows: int, max_num_columns: int) -> jax.Array:
    """float32 `[batch, cells]`: 1 for the cells in column[b] `[batch]` (ints), else 0."""
    of_cell = column_of_cell(max_num_rows, max_num_columns)
    return (of_cell[None] == column[:, None]).astype(jnp.float32)


def single_column_logits(
    token_logits: jax.Array,
    column_logits: jax.Array,
    cells: jax.Array,
    mask_per_cell: jax.Array,
    max_num_rows: int,
    max_num_columns: int,
) -> jax.Array:
    """The logits transformers returns for a model that selects cells of one column:
    token_logits `[batch, length]` averaged per cell, plus LOG_ZERO for cells outside the
    column with the highest column_logits `[batch, max_num_columns]`, for column 0 and for
    absent cells; `[batch, length]`."""
    per_cell = segment_mean(token_logits, cells, max_num_rows * max_num_columns)
    chosen = in_column(jnp.argmax(column_logits, axis=-1), max_num_rows, max_num_columns)
    chosen = chosen * (column_of_cell(max_num_rows, max_num_columns) != 0)
    return gather(per_cell + LOG_ZERO * (1.0 - mask_per_cell * chosen), cells)
