"""remat_layer: every family's loss and gradients are the same under every remat policy."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from polyformer.models import FAMILIES
from polyformer.models.config import REMAT
from polyformer.training.objectives import OBJECTIVES
from tests.test_families import objective_batch


def loss_and_grads(model_type: str, remat: str, train: bool):
    family = FAMILIES[model_type]
    config = dataclasses.replace(family.config.tiny(), remat=remat)
    model = family.build(config, rngs=nnx.Rngs(0))
    if train:
        model.train()
    batch = {k: jnp.asarray(v) for k, v in objective_batch(model_type, config).items()}
    objective = OBJECTIVES[family.objectives[0]]

    @nnx.jit
    def step(model):
        def loss(model):
            rngs = nnx.Rngs(dropout=1) if train else None
            return objective(model, batch, rngs)[0]

        return nnx.value_and_grad(loss)(model)

    value, grads = step(model)
    return value, jax.tree.leaves(nnx.to_pure_dict(grads))


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_every_remat_gives_the_same_loss_and_gradients(model_type):
    value, grads = loss_and_grads(model_type, "none", train=False)
    assert any(np.any(g != 0) for g in grads)
    for remat in REMAT[1:]:
        other_value, other_grads = loss_and_grads(model_type, remat, train=False)
        np.testing.assert_allclose(other_value, value, atol=1e-6, rtol=1e-6)
        for got, expected in zip(other_grads, grads, strict=True):
            np.testing.assert_allclose(got, expected, atol=1e-6, rtol=1e-6)


def test_remat_draws_the_same_dropout_masks():
    value, grads = loss_and_grads("gpt2", "none", train=True)
    other_value, other_grads = loss_and_grads("gpt2", "full", train=True)
    np.testing.assert_allclose(other_value, value, atol=1e-6, rtol=1e-6)
    for got, expected in zip(other_grads, grads, strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=1e-6)


def test_an_unknown_remat_is_refused():
    with pytest.raises(ValueError, match="remat must be one of none, full, dots, minimal"):
        dataclasses.replace(FAMILIES["gpt2"].config.tiny(), remat="some")
