"""TAPAS against transformers' TapasForQuestionAnswering and TapasModel: same checkpoint, same
inputs, same logits; checkpoints both ways."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx
from safetensors.numpy import load_file

import polyformer as pf
from polyformer.models import tapas
from tests.models.layer_outputs import assert_layers_match
from tests.models.tapas.reference import (
    INPUT_NAMES,
    LENGTH,
    TINY,
    WTQ,
    assert_logits_match,
    encode,
    forward,
    hf_forward,
    inputs,
    ours_forward,
    random_hf_model,
    table_inputs,
)
from tests.models.tapas.test_gradient_parity import assert_gradient_parity

CONFIGS = {
    "absolute_positions_empty_column": dict(
        reset_position_index_per_cell=False, allow_empty_column_selection=True
    ),
    "no_aggregation": dict(num_aggregation_labels=0, aggregation_labels=None, temperature=1.0),
    "exact_relu": dict(hidden_act="relu", layer_norm_eps=1e-5, num_hidden_layers=1),
}


def test_wtq_logits_match_transformers(wtq_checkpoint):
    hf_model, path = wtq_checkpoint
    ours = pf.from_pretrained(path)
    assert isinstance(ours, tapas.TapasForQuestionAnswering)
    x = inputs()
    want, got = hf_forward(hf_model, x), ours_forward(ours, x)
    assert_logits_match(got.logits, want.logits, x["attention_mask"], hf_model.config.temperature)
    np.testing.assert_allclose(
        got.logits_aggregation, want.logits_aggregation.numpy(), atol=1e-4, rtol=0
    )
    # Different examples select different columns, so the column masking is exercised.
    assert len(set(np.argmax(np.asarray(got.column_logits), -1).tolist())) > 1


@pytest.mark.parametrize("name", CONFIGS)
def test_logits_match_transformers(name, tmp_path):
    hf_model = random_hf_model(**CONFIGS[name])
    hf_model.save_pretrained(tmp_path)
    ours = pf.from_pretrained(tmp_path)
    x = inputs()
    want, got = hf_forward(hf_model, x), ours_forward(ours, x)
    assert_logits_match(got.logits, want.logits, x["attention_mask"], hf_model.config.temperature)
    if hf_model.config.num_aggregation_labels:
        np.testing.assert_allclose(
            got.logits_aggregation, want.logits_aggregation.numpy(), atol=1e-4, rtol=0
        )
    else:
        assert got.logits_aggregation is None


def test_multi_column_logits_match_transformers(tmp_path):
    """Without select_one_column transformers returns logits only with labels (its inference
    path needs column logits), and only with float labels (integer ones fail in its Bernoulli
    log-likelihood); ours returns the same logits either way."""
    hf_model = random_hf_model(select_one_column=False, average_logits_per_cell=True)
    hf_model.save_pretrained(tmp_path)
    ours = pf.from_pretrained(tmp_path)
    x = inputs()
    labels = {k: x[k] for k in ("float_answer", "numeric_values", "numeric_values_scale")}
    want = hf_forward(hf_model, x, labels=x["labels"].astype(np.float32), **labels).logits.numpy()
    got = np.asarray(ours_forward(ours, x).logits)
    real = x["attention_mask"].astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=0)


def test_base_model_matches_transformers(tmp_path):
    hf_model = random_hf_model(transformers.TapasModel)
    hf_model.save_pretrained(tmp_path)
    ours = pf.from_pretrained(tmp_path)
    assert isinstance(ours, tapas.TapasModel)
    x = inputs()
    want = hf_forward(hf_model, x, output_hidden_states=True)
    call = nnx.jit(lambda m, *a: m(*a, output_hidden_states=True))
    got = call(ours, *(jnp.asarray(x[k]) for k in INPUT_NAMES))
    real = x["attention_mask"].astype(bool)
    assert len(got.hidden_states) == len(want.hidden_states) == TINY["num_hidden_layers"] + 1
    for g, w in zip(got.hidden_states, want.hidden_states, strict=True):
        np.testing.assert_allclose(np.asarray(g)[real], w.numpy()[real], atol=1e-4, rtol=0)
    np.testing.assert_allclose(got.pooler_output, want.pooler_output.numpy(), atol=1e-4, rtol=0)


def test_save_pretrained_round_trips_through_transformers(wtq_checkpoint, tmp_path):
    hf_model, path = wtq_checkpoint
    ours = pf.from_pretrained(path)
    pf.save_pretrained(ours, tmp_path)
    # Every tensor comes back bit for bit, under the same names.
    original, saved = (
        load_file(path / "model.safetensors"),
        load_file(tmp_path / "model.safetensors"),
    )
    assert sorted(original) == sorted(saved)
    for name, tensor in original.items():
        np.testing.assert_array_equal(saved[name], tensor, err_msg=name)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["TapasForQuestionAnswering"]
    reloaded, info = transformers.TapasForQuestionAnswering.from_pretrained(
        tmp_path, output_loading_info=True
    )
    assert not any(info.values()), info
    for field in (
        "temperature",
        "cell_selection_preference",
        "huber_loss_delta",
        "select_one_column",
    ):
        assert getattr(reloaded.config, field) == getattr(hf_model.config, field)
    assert reloaded.config.aggregation_labels == WTQ["aggregation_labels"]
    assert ours.config.aggregation_labels == ("NONE", "SUM", "AVERAGE", "COUNT")
    hash(ours.config)
    x = inputs()
    assert_logits_match(
        hf_forward(reloaded.eval(), x).logits,
        hf_forward(hf_model, x).logits,
        x["attention_mask"],
        hf_model.config.temperature,
    )


def test_base_model_saves_for_transformers(tmp_path):
    ours = tapas.TapasModel(tapas.TapasConfig.tiny(), rngs=nnx.Rngs(1))
    pf.save_pretrained(ours, tmp_path)
    hf_model, info = transformers.TapasModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info
    x = inputs()
    want = hf_forward(hf_model.eval(), x).last_hidden_state.numpy()
    got = np.asarray(encode(ours, *(jnp.asarray(x[k]) for k in INPUT_NAMES)).last_hidden_state)
    real = x["attention_mask"].astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=0)


@pytest.mark.heavy
@pytest.mark.usefixtures("optimized")
def test_official_wtq_configuration_matches_transformers(tmp_path):
    """google/tapas-base-finetuned-wtq's configuration (random weights), two short tables, one
    checkpoint: gradients with scan_layers (saving the checkpoint), then the unscanned model's
    logits, aggregation logits and weakly supervised loss."""
    hf_model = random_hf_model(**{k: WTQ[k] for k in TINY})
    x = table_inputs(
        WTQ["vocab_size"], WTQ["type_vocab_sizes"], 48, shapes=[(3, 4, 5), (2, 6, 4)], unanswered=()
    )
    assert_gradient_parity(hf_model, tmp_path, x, scan_layers=True)
    ours = pf.from_pretrained(tmp_path)
    extra = {k: x[k] for k in ("labels", "float_answer", "numeric_values", "numeric_values_scale")}
    want = hf_forward(hf_model, x, **extra)
    got = forward(
        ours,
        *(jnp.asarray(x[k]) for k in INPUT_NAMES),
        **{k: jnp.asarray(v) for k, v in extra.items()},
    )
    assert_logits_match(got.logits, want.logits, x["attention_mask"], hf_model.config.temperature)
    np.testing.assert_allclose(
        got.logits_aggregation, want.logits_aggregation.numpy(), atol=1e-4, rtol=0
    )
    np.testing.assert_allclose(float(got.loss), want.loss.item(), atol=1e-4, rtol=0)


def test_attentions_and_hidden_states_match_eager_transformers(wtq_checkpoint):
    _, path = wtq_checkpoint
    hf_model = transformers.TapasForQuestionAnswering.from_pretrained(
        path, attn_implementation="eager"
    ).eval()
    x = inputs(seed=1)
    flags = dict(output_attentions=True, output_hidden_states=True)
    want = hf_forward(hf_model, x, **flags)
    got = nnx.jit(lambda m, *a: m(*a, **flags))(
        pf.from_pretrained(path), *(x[k] for k in INPUT_NAMES)
    )
    layers = TINY["num_hidden_layers"]
    assert got.attentions[0].shape == (
        len(x["input_ids"]),
        TINY["num_attention_heads"],
        LENGTH,
        LENGTH,
    )
    # Padded queries attend to the real tokens in both, so every row compares.
    assert_layers_match(got.attentions, want.attentions, layers, 1e-5)
    assert_layers_match(got.hidden_states, want.hidden_states, layers + 1, 1e-5)
