"""chunked_lm_loss: the same losses, predictions and gradients as the whole logits give, each
device's rows on its own on a mesh, and the causal_lm objective built on it the same as the loss
of the model's logits."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from polyformer.models.gpt.config import GPT2Config
from polyformer.models.gpt.loss import chunked_lm_loss
from polyformer.models.gpt.model import GPT2LMHeadModel
from polyformer.training import sharding
from polyformer.training.objectives.lm import causal_lm
from tests.attention.conftest import target_devices


def whole_logits_loss(hidden, kernel, targets):
    logits = jnp.dot(hidden, kernel, preferred_element_type=jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return losses, jnp.argmax(logits, -1)


def problem(batch=3, length=7, embed=16, vocab=53):
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(batch, length, embed)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(embed, vocab)) * 0.5, jnp.float32)
    targets = jnp.asarray(rng.integers(0, vocab, (batch, length)))
    return hidden, kernel, targets


@pytest.mark.parametrize("chunk", [1, 5, 21, 64])  # one token, uneven, even, more than all
def test_losses_and_predictions_match_the_whole_logits(chunk):
    hidden, kernel, targets = problem()
    losses, predictions = jax.jit(chunked_lm_loss, static_argnames="chunk")(
        hidden, kernel, targets, chunk=chunk
    )
    expected_losses, expected_predictions = whole_logits_loss(hidden, kernel, targets)
    np.testing.assert_allclose(losses, expected_losses, atol=1e-6, rtol=1e-6)
    np.testing.assert_array_equal(predictions, expected_predictions)


def test_gradients_match_the_whole_logits():
    hidden, kernel, targets = problem()
    weights = jnp.asarray(np.random.default_rng(1).integers(0, 2, targets.shape), jnp.float32)

    def mean_loss(loss_fn):
        return lambda h, k: jnp.sum(loss_fn(h, k, targets)[0] * weights) / jnp.sum(weights)

    chunked = jax.jit(jax.grad(mean_loss(lambda *a: chunked_lm_loss(*a, chunk=4)), (0, 1)))
    whole = jax.grad(mean_loss(whole_logits_loss), (0, 1))
    for got, expected in zip(chunked(hidden, kernel), whole(hidden, kernel), strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=1e-6)


def test_the_logits_of_all_tokens_never_exist_at_once():
    hidden, kernel, targets = problem(batch=4, length=256, embed=8, vocab=1000)

    def loss(h, k):
        return jnp.mean(chunked_lm_loss(h, k, targets, chunk=64)[0])

    compiled = jax.jit(jax.grad(loss, (0, 1))).lower(hidden, kernel).compile()
    whole_logits = 4 * 256 * 1000 * 4
    assert compiled.memory_analysis().temp_size_in_bytes < whole_logits / 2


def test_on_a_mesh_each_device_computes_the_logits_of_its_own_rows():
    """Under the trainer's layout the batch stays split through the loop over chunks: no device
    gathers the hidden state of the others (compiled for a 4-chip TPU)."""
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=4), target_devices("tpu"))
    rules = sharding.DEFAULT_RULES
    rows = sharding.batch_sharding(mesh, rules)
    hidden = jax.ShapeDtypeStruct((8, 256, 64), jnp.float32, sharding=rows)
    targets = jax.ShapeDtypeStruct((8, 256), jnp.int32, sharding=rows)
    kernel = jax.ShapeDtypeStruct((64, 1000), jnp.float32)

    def loss(h, k, t):
        return jnp.mean(chunked_lm_loss(h, k, t, chunk=128)[0])

    step = sharding.constrained(jax.grad(loss, (0, 1)), mesh, rules)
    compiled = jax.jit(step).trace(hidden, kernel, targets).lower().compile()
    assert "all-gather" not in compiled.as_text()


def test_a_chunk_below_one_token_is_refused():
    with pytest.raises(ValueError, match="chunk must be a positive"):
        chunked_lm_loss(*problem(), chunk=0)


@pytest.mark.parametrize("tied", [True, False])
def test_the_causal_lm_objective_matches_the_loss_of_the_models_logits(tied):
    config = dataclasses.replace(GPT2Config.tiny(), tie_word_embeddings=tied)
    model = GPT2LMHeadModel(config, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(2)
    ids = jnp.asarray(rng.integers(0, config.vocab_size, (2, 9)))
    batch = {
        "inputs": ids[:, :-1],
        "targets": ids[:, 1:],
        "weights": jnp.ones((2, 8)).at[0, 3].set(0),
    }

    def plain(model):
        logits = model(batch["inputs"]).logits
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        return jnp.sum(losses * batch["weights"]) / jnp.sum(batch["weights"])

    def objective(model):
        return causal_lm(model, batch, None)[0]

    value, grads = nnx.jit(nnx.value_and_grad(objective))(model)
    expected_value, expected_grads = nnx.value_and_grad(plain)(model)
    np.testing.assert_allclose(value, expected_value, atol=1e-6, rtol=1e-6)
    for got, expected in zip(
        jax.tree.leaves(nnx.to_pure_dict(grads)),
        jax.tree.leaves(nnx.to_pure_dict(expected_grads)),
        strict=True,
    ):
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=1e-6)
