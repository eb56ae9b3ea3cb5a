"""From TAPAS logits to answers: selected cells, the aggregation operator, and its result."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from polyformer.models.tapas import numbers
from polyformer.models.tapas.config import TOKEN_TYPES

# WTQ's aggregation heads (config.aggregation_labels) name these operators.
_AGGREGATIONS = {"SUM": sum, "AVERAGE": lambda values: sum(values) / len(values)}


def convert_logits_to_predictions(
    batch: Mapping[str, Any],
    logits: Any,
    logits_aggregation: Any | None = None,
    cell_classification_threshold: float = 0.5,
) -> tuple[list[list[tuple[int, int]]], list[int] | None]:
    """Selected cells and aggregation operator per example, as transformers' TapasTokenizer
    `convert_logits_to_predictions` computes them.

    A cell is selected when the mean over its tokens of sigmoid(logit) exceeds the threshold.

    Args:
      batch: the tokenizer's output (`attention_mask` `[batch, length]`, `token_type_ids`
        `[batch, length, 7]`); numpy or jax arrays.
      logits: `[batch, length]` token logits of the cell-selection head.
      logits_aggregation: `[batch, num_aggregation_labels]`, or None.

    Returns: per example the sorted (row, column) cells (row 0 = first data row), and the argmax
    aggregation index per example (None without `logits_aggregation`). Unlike transformers, an
    example without table tokens gets an empty list instead of being left out.
    """
    if not 0 <= cell_classification_threshold < 1:
        raise ValueError(
            "cell_classification_threshold is a probability in [0, 1) (a cell is selected when "
            f"its mean probability exceeds it), got {cell_classification_threshold!r}"
        )
    logits = np.array(logits, np.float32)
    token_types = np.asarray(batch["token_type_ids"])
    if logits.shape != token_types.shape[:-1]:
        raise ValueError(f"logits {logits.shape} do not match token_type_ids {token_types.shape}")
    segments = token_types[..., TOKEN_TYPES.index("segment_ids")]
    columns = token_types[..., TOKEN_TYPES.index("column_ids")] - 1
    rows = token_types[..., TOKEN_TYPES.index("row_ids")] - 1
    # float32 sigmoid as transformers does (clipped so exp cannot overflow), then float64.
    logits[logits < -88.7] = -88.7
    probabilities = (1 / (1 + np.exp(-logits))).astype(np.float64) * np.asarray(
        batch["attention_mask"]
    )

    coordinates = []
    for example in range(len(probabilities)):
        in_cell = (segments[example] == 1) & (columns[example] >= 0) & (rows[example] >= 0)
        cells: dict[tuple[int, int], list[float]] = {}
        for position in np.flatnonzero(in_cell):
            cell = (int(rows[example, position]), int(columns[example, position]))
            cells.setdefault(cell, []).append(probabilities[example, position])
        coordinates.append(
            sorted(
                cell
                for cell, values in cells.items()
                if np.array(values).mean() > cell_classification_threshold
            )
        )
    if logits_aggregation is None:
        return coordinates, None
    return coordinates, np.asarray(logits_aggregation).argmax(axis=-1).tolist()


@dataclasses.dataclass(frozen=True)
class Answer:
    """One question's answer, as transformers' table-question-answering pipeline gives it, plus
    the aggregation computed.

    answer: "SUM > 11, 23" as transformers formats it (the operator prefix only when it is not
      the no-aggregation label); cells: the selected cell texts; coordinates: their (row, column);
      aggregator: the operator's name (None when the model has no aggregation head); result: the
      operator applied to the cells (SUM, AVERAGE: of their numbers; COUNT: how many), None for
      NONE or when a cell has no single number.
    """

    answer: str
    coordinates: list[tuple[int, int]]
    cells: list[str]
    aggregator: str | None = None
    result: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """transformers' pipeline output (answer, coordinates, cells, aggregator), with result."""
        out: dict[str, Any] = {
            "answer": self.answer,
            "coordinates": self.coordinates,
            "cells": self.cells,
        }
        if self.aggregator is not None:
            out["aggregator"] = self.aggregator
            out["result"] = self.result
        return out

    def __str__(self) -> str:
        return self.answer if self.result is None else f"{self.answer} = {self.result:g}"


def aggregate(aggregator: str, cells: Sequence[str]) -> float | None:
    """`aggregator` (SUM, AVERAGE, COUNT) applied to cell texts; None for any other operator,
    no cells, or (SUM, AVERAGE) a cell without a single number."""
    if aggregator == "COUNT":
        return float(len(cells))
    if aggregator not in _AGGREGATIONS or not cells:
        return None
    values = [numbers.to_float(cell) for cell in cells]
    if any(value is None for value in values):
        return None
    return float(_AGGREGATIONS[aggregator](values))


def answer(
    cells_table: Sequence[Sequence[str]],
    coordinates: list[tuple[int, int]],
    aggregation_index: int | None = None,
    aggregation_labels: Mapping[int, str] | None = None,
    no_aggregation_label_index: int | None = 0,
) -> Answer:
    """The Answer for predicted `coordinates` over `cells_table` (rows of cell texts), with the
    operator `aggregation_labels[aggregation_index]` when the model predicts one."""
    cells = [cells_table[row][column] for row, column in coordinates]
    if aggregation_index is None or not aggregation_labels:
        return Answer(", ".join(cells), coordinates, cells)
    aggregator = aggregation_labels[aggregation_index]
    prefix = "" if aggregation_index == no_aggregation_label_index else aggregator + " > "
    return Answer(
        prefix + ", ".join(cells), coordinates, cells, aggregator, aggregate(aggregator, cells)
    )
