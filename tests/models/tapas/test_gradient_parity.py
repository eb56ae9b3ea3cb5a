"""TAPAS's gradients against transformers': the TAPAS objective (the family's default) and
TapasForQuestionAnswering's loss with labels, with respect to every parameter, under weak and
strong supervision of the aggregation."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import polyformer as pf
from tests.models.gradients import assert_gradients_match, our_gradients, torch_gradients
from tests.models.tapas.reference import (
    TINY,
    WIKISQL_SUPERVISED,
    random_hf_model,
    table_inputs,
)

COLUMN_HEAD = ("column_output_weights", "column_output_bias")
NAMES = (
    "input_ids", "attention_mask", "token_type_ids", "labels", "aggregation_labels",
    "float_answer", "numeric_values", "numeric_values_scale",
)  # fmt: skip


def zero(name: str) -> bool:
    """Biases that shift every logit of one softmax alike, which it ignores: their gradients
    are zero in exact arithmetic, rounding noise in both frameworks. A key projection's bias
    adds q . b_k to every attention score of a query (padded keys masked or not);
    column_output_bias adds itself to every column logit, which the loss uses only through the
    softmax over columns and their argmax."""
    return name.endswith("attention.self.key.bias") or name == "column_output_bias"


def assert_gradient_parity(hf_model, path, x, scan_layers=False):
    hf_model.save_pretrained(path)
    ours = pf.from_pretrained(path, scan_layers=scan_layers)
    loss, got = our_gradients(ours, {k: jnp.asarray(x[k]) for k in NAMES})
    inputs = {k: torch.as_tensor(x[k]) for k in NAMES}
    # Float labels, which every one of transformers' loss paths accepts.
    inputs["labels"] = inputs["labels"].float()
    want_loss, want = torch_gradients(hf_model, lambda m: m(**inputs).loss, path / "grads")
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    # Cells chosen from any column: the column head takes no part.
    unused = () if hf_model.config.select_one_column else COLUMN_HEAD
    assert_gradients_match(got, want, zero=zero, unused=unused)


SUPERVISED = {k: v for k, v in WIKISQL_SUPERVISED.items() if k not in TINY}
CONFIGS = {
    # WTQ: weak supervision (float answers), the answer-loss cutoff, one selected column.
    "wtq": {},
    # Strong supervision of the aggregation as WikiSQL-supervised configures it, the empty column
    # not selectable (WTQ's choice) and every example answered.
    "strong_supervision": dict(SUPERVISED, allow_empty_column_selection=False),
    # WikiSQL-supervised as it is, the empty column selectable, with an example that has no
    # answer cells.
    "wikisql_supervised": SUPERVISED,
    # Cells chosen in any column, token logits averaged per cell, no cutoff.
    "multi_column": dict(
        select_one_column=False, average_logits_per_cell=True, answer_loss_cutoff=None
    ),
}
UNANSWERED = {"wtq": (), "strong_supervision": (), "wikisql_supervised": (3,), "multi_column": ()}


@pytest.mark.parametrize("name", CONFIGS)
def test_gradients_match_transformers(name, tmp_path):
    hf_model = random_hf_model(**CONFIGS[name])
    x = table_inputs(
        TINY["vocab_size"], TINY["type_vocab_sizes"], TINY["max_position_embeddings"],
        unanswered=UNANSWERED[name],
    )  # fmt: skip
    assert_gradient_parity(hf_model, tmp_path, x)
