"""remat_layer: every family's loss and gradients are the same under every remat policy;
constrain: a no-op without a mesh, and a tiny GPT-2 constrained on a mesh of 8 devices gives one
device's loss and gradients."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from polyformer.models import FAMILIES
from polyformer.models.config import REMAT
from polyformer.models.layers import constrain
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


def test_constrain_is_the_identity_without_a_mesh():
    x = jnp.ones((2, 3, 4))
    assert constrain(x, ("batch", "length", "embed")) is x


def test_a_constrained_step_on_8_devices_matches_one_device(tmp_path):
    worker = Path(__file__).with_name("sharded_worker.py")
    run = subprocess.run(
        [sys.executable, str(worker), str(tmp_path / "out.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["devices"] == 8
    # Every layer's output is pinned, in the forward pass and in the backward one.
    assert result["constraints"] >= result["n_layer"] > result["constraints_without"]
    np.testing.assert_allclose(result["sharded_loss"], result["single_loss"], rtol=1e-6)
    assert result["grad_max_abs_diff"] < 1e-6
