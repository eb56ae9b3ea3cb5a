"""A tiny GPT-2's causal LM loss and gradients on one device and on a mesh of 8 simulated CPU
devices (data 2 x fsdp 2 x tensor 2) with its activations constrained by their logical axes, in
a process of their own (the device count is fixed when JAX starts), written to a JSON file for
tests/models/test_layers.py.

    python tests/models/sharded_worker.py OUT.json
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def constraints(stablehlo: str) -> int:
    """How many sharding constraints a lowered program holds (Shardy's op or GSPMD's call)."""
    return stablehlo.count("sdy.sharding_constraint") + stablehlo.count("@Sharding")


def main() -> None:
    # Read when JAX creates its CPU client, at the first use of a device below.
    jax.config.update("jax_num_cpu_devices", 8)
    from polyformer.models.gpt import GPT2Config, GPT2LMHeadModel
    from polyformer.training import sharding
    from polyformer.training.objectives import OBJECTIVES

    config = GPT2Config.tiny()
    model = GPT2LMHeadModel(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    ids = np.random.default_rng(0).integers(0, config.vocab_size, (8, 9))
    batch = {"inputs": jnp.asarray(ids[:, :-1]), "targets": jnp.asarray(ids[:, 1:])}
    objective = OBJECTIVES["causal_lm"]

    def loss(params, batch):
        return objective(nnx.merge(graphdef, params), batch, None)[0]

    device = jax.devices()[0]
    single = jax.jit(jax.value_and_grad(loss))(
        jax.device_put(params, device), jax.device_put(batch, device)
    )
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2))
    rules = sharding.DEFAULT_RULES
    placed = jax.device_put(params, sharding.param_shardings(params, mesh, rules))
    split = jax.device_put(batch, sharding.batch_sharding(mesh, rules))
    step = jax.jit(sharding.constrained(jax.value_and_grad(loss), mesh, rules))
    sharded = step(placed, split)
    unconstrained = jax.jit(jax.value_and_grad(loss)).lower(placed, split).as_text()
    (single_loss, single_grads), (sharded_loss, sharded_grads) = jax.device_get((single, sharded))
    diffs = jax.tree.map(lambda a, b: np.max(np.abs(a - b)), single_grads, sharded_grads)
    result = {
        "devices": len(jax.devices()),
        "n_layer": config.n_layer,
        "single_loss": float(single_loss),
        "sharded_loss": float(sharded_loss),
        "grad_max_abs_diff": float(max(jax.tree.leaves(diffs))),
        "constraints": constraints(step.lower(placed, split).as_text()),
        "constraints_without": constraints(unconstrained),
    }
    with open(sys.argv[1], "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
