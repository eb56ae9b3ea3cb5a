"""The TAPAS loss (polyformer.models.tapas.loss) against transformers' TapasForQuestionAnswering
loss: the same checkpoint and inputs, each supervision mode and loss option."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import polyformer as pf
from polyformer.models import tapas
from tests.models.tapas.reference import (
    TINY,
    WIKISQL_SUPERVISED,
    hf_forward,
    random_hf_model,
    table_inputs,
)

LENGTH = TINY["max_position_embeddings"]
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
LABEL_NAMES = (
    "labels",
    "aggregation_labels",
    "float_answer",
    "numeric_values",
    "numeric_values_scale",
)


def inputs(**kwargs):
    return table_inputs(TINY["vocab_size"], TINY["type_vocab_sizes"], LENGTH, **kwargs)


def hf_loss(hf_model, x, **config):
    """transformers' loss with `config` fields changed (its forward reads them at call time);
    float labels, which every one of its loss paths accepts."""
    original = {k: getattr(hf_model.config, k) for k in config}
    try:
        for k, v in config.items():
            setattr(hf_model.config, k, v)
        extra = {k: x[k] for k in LABEL_NAMES}
        extra["labels"] = x["labels"].astype(np.float32)
        return hf_forward(hf_model, x, **extra).loss.item()
    finally:
        for k, v in original.items():
            setattr(hf_model.config, k, v)


@nnx.jit
def model_loss(model, batch):
    return model(**batch).loss


def as_batch(x):
    return {k: jnp.asarray(x[k]) for k in (*INPUT_NAMES, *LABEL_NAMES)}


@pytest.fixture(scope="module")
def wtq(tmp_path_factory):
    """(the transformers model, ours, inputs where every example has answer cells, our forward
    outputs on them): WTQ heads at the TINY sizes."""
    hf_model = random_hf_model()
    path = tmp_path_factory.mktemp("tiny-tapas-loss")
    hf_model.save_pretrained(path)
    ours = pf.from_pretrained(path)
    x = inputs(unanswered=())
    out = nnx.jit(lambda m, *a: m(*a))(ours, *(jnp.asarray(x[k]) for k in INPUT_NAMES))
    return hf_model, ours, x, out


# Options of the loss alone (the forward pass does not read them).
LOSS_OPTIONS = {
    "wtq": {},
    "no_answer_cutoff": dict(answer_loss_cutoff=None),
    "first_order_average": dict(
        answer_loss_cutoff=None, average_approximation_function="first_order"
    ),
    "second_order_average": dict(
        answer_loss_cutoff=None, average_approximation_function="second_order"
    ),
    "normalized_answer_loss": dict(answer_loss_cutoff=None, use_normalized_answer_loss=True),
    "weights": dict(
        answer_loss_cutoff=None, aggregation_loss_weight=0.7, answer_loss_importance=1.9,
        aggregation_temperature=0.6, huber_loss_delta=25.0, cell_selection_preference=0.9,
    ),
    "strong_supervision": dict(use_answer_as_supervision=False),
    "no_per_token_loss": dict(disable_per_token_loss=True),
}  # fmt: skip


@pytest.mark.parametrize("name", LOSS_OPTIONS)
def test_loss_matches_transformers(wtq, name):
    hf_model, ours, x, out = wtq
    options = LOSS_OPTIONS[name]
    config = dataclasses.replace(ours.config, **options)
    got = jax.jit(tapas.tapas_loss, static_argnums=0)(
        config,
        token_logits=out.token_logits,
        column_logits=out.column_logits,
        logits_aggregation=out.logits_aggregation,
        token_type_ids=jnp.asarray(x["token_type_ids"]),
        attention_mask=jnp.asarray(x["attention_mask"]),
        **{k: jnp.asarray(x[k]) for k in LABEL_NAMES},
    )
    want = hf_loss(hf_model, x, **options)
    assert np.isfinite(want) and want > 0.1
    np.testing.assert_allclose(float(got), want, atol=1e-4, rtol=0)


def test_weak_supervision_terms_are_exercised(wtq):
    """The inputs make every part of the WTQ loss count: some examples aggregate, some select
    cells, and the aggregation decision is not a near tie."""
    _, ours, x, out = wtq
    c = ours.config
    mass = np.asarray(jax.nn.softmax(out.logits_aggregation)[:, 1:].sum(-1))
    assert np.all(np.abs(mass - c.cell_selection_preference) > 1e-3)
    mask = tapas.loss.aggregate_mask(
        jnp.asarray(x["float_answer"]),
        out.logits_aggregation,
        jnp.asarray(x["labels"]),
        c.cell_selection_preference,
    )
    assert 0 < float(mask.sum()) < len(mask)


@pytest.mark.parametrize(
    "config",
    [
        # Strong supervision as WikiSQL-supervised is configured (temperature, empty column
        # allowed), with an example that has no answer cells.
        WIKISQL_SUPERVISED,
        dict(select_one_column=False, average_logits_per_cell=True, answer_loss_cutoff=None),
        dict(num_aggregation_labels=0, aggregation_labels=None),
    ],
    ids=["wikisql_supervised", "multi_column", "no_aggregation"],
)
def test_model_loss_matches_transformers(config, tmp_path):
    config = {k: v for k, v in config.items() if k not in TINY}
    hf_model = random_hf_model(**config)
    hf_model.save_pretrained(tmp_path)
    x = inputs()
    got = model_loss(pf.from_pretrained(tmp_path), as_batch(x))
    np.testing.assert_allclose(float(got), hf_loss(hf_model, x), atol=1e-4, rtol=0)


def test_gradient_is_finite_in_training(wtq):
    """NaN numeric values and float answers must not reach the gradient; dropout on."""
    _, ours, x, _ = wtq
    graphdef, params, rest = nnx.split(ours, nnx.Param, ...)

    @jax.jit
    def grad(params, batch):
        def loss(params):
            model = nnx.merge(graphdef, params, rest)
            model.train()
            return model(**batch, rngs=nnx.Rngs(dropout=0)).loss

        return jax.grad(loss)(params)

    grads = grad(params, as_batch(x))
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert float(jnp.abs(grads["output_weights"][...]).sum()) > 0


def test_gumbel_options_sample_with_a_key(wtq):
    _, ours, x, out = wtq
    config = dataclasses.replace(
        ours.config, use_gumbel_for_cells=True, use_gumbel_for_aggregation=True
    )
    args = dict(
        token_logits=out.token_logits, column_logits=out.column_logits,
        logits_aggregation=out.logits_aggregation, token_type_ids=jnp.asarray(x["token_type_ids"]),
        **{k: jnp.asarray(x[k]) for k in LABEL_NAMES},
    )  # fmt: skip
    with pytest.raises(ValueError, match="pass rng"):
        jax.eval_shape(lambda a: tapas.tapas_loss(config, **a), args)
    loss = jax.jit(lambda rng: tapas.tapas_loss(config, **args, rng=rng))
    a, b = (float(loss(jax.random.key(k))) for k in (0, 1))
    assert np.isfinite(a) and a != b
    assert float(loss(jax.random.key(0))) == a


def test_missing_supervision_raises(wtq):
    _, ours, x, out = wtq
    args = dict(
        token_logits=out.token_logits, column_logits=out.column_logits,
        logits_aggregation=out.logits_aggregation, token_type_ids=jnp.asarray(x["token_type_ids"]),
        labels=jnp.asarray(x["labels"]),
    )  # fmt: skip
    float_answer = jnp.asarray(x["float_answer"])
    strong = dataclasses.replace(ours.config, use_answer_as_supervision=False)
    for config, more, missing in (
        (ours.config, {}, "float_answer"),
        (ours.config, {"float_answer": float_answer}, "numeric_values"),
        (strong, {}, "aggregation_labels"),
    ):
        with pytest.raises(ValueError, match=missing):  # tracing is enough to raise
            jax.eval_shape(lambda a, c=config: tapas.tapas_loss(c, **a), {**args, **more})


def test_segment_reductions_match_numpy():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(2, 9)).astype(np.float32)
    ids = np.array([[0, 0, 2, 2, 2, 3, 0, 3, 3], [1, 1, 1, 1, 0, 0, 0, 0, 1]])
    for name, reduce in (("mean", np.mean), ("max", np.max), ("min", np.min), ("sum", np.sum)):
        got = np.asarray(getattr(tapas.segments, f"segment_{name}")(values, ids, 5))
        for b in range(2):
            for s in range(5):
                members = values[b][ids[b] == s]
                want = reduce(members) if len(members) else 0.0
                np.testing.assert_allclose(got[b, s], want, rtol=1e-6, err_msg=f"{name} {b} {s}")
    np.testing.assert_array_equal(
        tapas.segments.gather(np.arange(10.0).reshape(2, 5), ids)[1, :2], [6, 6]
    )
