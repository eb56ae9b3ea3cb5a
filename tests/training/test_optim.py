"""The optimizer's learning-rate multipliers: new heads on a pretrained encoder train faster."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from polyformer.models.tapas import TapasConfig
from polyformer.models.tapas.model import TapasForQuestionAnswering
from polyformer.training import config, optim, sharding
from polyformer.training.step import init_state


def updates(optimizer_config):
    model = TapasForQuestionAnswering(TapasConfig.tiny(), rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    optimizer = optim.make_optimizer(optimizer_config, 10)
    out, _ = optimizer.update(grads, optimizer.init(params), params)
    return dict(nnx.to_flat_state(out))


def test_multipliers_scale_the_updates_of_the_named_parameters_only():
    base = optim.OptimizerConfig(warmup_steps=0, grad_clip=None)
    multiplied = optim.OptimizerConfig(
        warmup_steps=0,
        grad_clip=None,
        learning_rate_multipliers={"output_weights": 10.0, "tapas.pooler": 3.0, "tapas": 2.0},
    )
    want, got = updates(base), updates(multiplied)
    assert set(got) == set(want)
    for path, update in got.items():
        if path[0] == "output_weights":
            factor = 10.0
        elif path[:2] == ("tapas", "pooler"):  # the longest matching path wins
            factor = 3.0
        elif path[0] == "tapas":
            factor = 2.0
        else:
            factor = 1.0
        np.testing.assert_allclose(update.get_value(), factor * want[path].get_value(), rtol=1e-6)


def test_a_multiplier_for_no_parameter_is_refused():
    with pytest.raises(ValueError, match=r"\['output_weight'\].*no parameter paths"):
        updates(optim.OptimizerConfig(learning_rate_multipliers={"output_weight": 10.0}))
    with pytest.raises(ValueError, match="positive factors"):
        optim.OptimizerConfig(learning_rate_multipliers={"output_weights": 0.0})


def test_multipliers_are_set_from_the_command_line():
    run = config.apply_overrides(
        config.RunConfig(), ["optimizer.learning_rate_multipliers={'output_weights': 10}"]
    )
    assert run.optimizer.learning_rate_multipliers == (("output_weights", 10),)
    hash(run.optimizer)


def test_a_state_with_multipliers_is_sharded_as_one_without():
    def shardings(optimizer_config):
        optimizer = optim.make_optimizer(optimizer_config, 10)

        def init():
            model = TapasForQuestionAnswering(TapasConfig.tiny(), rngs=nnx.Rngs(0))
            return init_state(nnx.state(model, nnx.Param), optimizer, jax.random.key(0))

        mesh = sharding.make_mesh(sharding.MeshConfig())
        abstract = jax.eval_shape(init)
        return sharding.state_shardings(abstract, optimizer, mesh, sharding.DEFAULT_RULES)

    want = shardings(optim.OptimizerConfig())
    got = shardings(optim.OptimizerConfig(learning_rate_multipliers={"output_weights": 10.0}))
    assert got.params == want.params
    # The multipliers add a stateless transform after AdamW: its moments are sharded alike.
    assert got.opt_state[:-1] == want.opt_state
    assert got.opt_state[-1] == optax.EmptyState()
