"""TAPAS question answering: the model's own cell-selection and aggregation loss."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from polyformer.training.data.synthetic import ArraySpec, Example

# The batch keys of the TAPAS loss besides the inputs; all but labels are optional.
SUPERVISION = (
    "labels", "table_mask", "aggregation_labels", "float_answer", "numeric_values",
    "numeric_values_scale",
)  # fmt: skip


def tapas(model: nnx.Module, batch: dict[str, jax.Array], rngs: nnx.Rngs | None):
    """The TAPAS loss (polyformer.models.tapas.loss.tapas_loss) of a TapasForQuestionAnswering.
    batch: "input_ids", "attention_mask" `[batch, length]`, "token_type_ids" `[batch, length,
    7]`, "labels" `[batch, length]` and what the config's supervision needs ("aggregation_labels"
    `[batch]`; or "float_answer" `[batch]`, "numeric_values" and "numeric_values_scale"
    `[batch, length]`). Metrics: cell_accuracy, the share of examples whose selected cells
    (probability > 0.5) are exactly the labelled ones; aggregation_accuracy when labelled."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    supervision = {k: batch[k] for k in SUPERVISION if k in batch}
    out = model(**inputs, **supervision, rngs=rngs)
    table = (batch["token_type_ids"][..., 2] > 0) & (batch["attention_mask"] > 0)
    wrong = ((out.logits > 0) != (batch["labels"] > 0)) & table
    metrics = {"cell_accuracy": jnp.mean(~jnp.any(wrong, axis=1))}
    if out.logits_aggregation is not None and "aggregation_labels" in batch:
        predicted = jnp.argmax(out.logits_aggregation, axis=-1)
        metrics["aggregation_accuracy"] = jnp.mean(predicted == batch["aggregation_labels"])
    return out.loss, metrics


def example(config: Any, length: int) -> Example:
    """A TAPAS batch of `length` tokens: the inputs, with every token in the table (token type 0
    or 1 in each of the 7 columns), cell labels and the scalar-answer supervision."""
    return Example(
        (
            ArraySpec("input_ids", (length,), "int32", config.vocab_size),
            ArraySpec("attention_mask", (length,), "int32", 2, 1),
            ArraySpec("token_type_ids", (length, 7), "int32", 2),
            ArraySpec("labels", (length,), "int32", 2),
            ArraySpec("float_answer", (), "float32"),
            ArraySpec("numeric_values", (length,), "float32"),
            ArraySpec("numeric_values_scale", (length,), "float32"),
        ),
        length,
    )
