"""A tiny GPT-2's causal LM loss and gradients on one device and on a mesh of 8 simulated CPU
devices (data 2 x fsdp 2 x tensor 2) with its activations constrained by their logical axes, in
a process of their own (the device count is fixed when JAX starts), written to a JSON file for
tests/models/test_layers.py. On the mesh it also runs the Pallas kernels (interpreted on CPU),
which the layout runs per shard, each device on its rows of the batch and its heads, against the
same kernel's XLA implementation on one device.

    python tests/models/sharded_worker.py OUT.json
"""

import dataclasses
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
    from polyformer import attention as A
    from polyformer.models.gpt import GPT2Config, GPT2LMHeadModel
    from polyformer.training import sharding
    from polyformer.training.objectives import OBJECTIVES

    config = GPT2Config.tiny()
    params = nnx.state(GPT2LMHeadModel(config, rngs=nnx.Rngs(0)))
    ids = np.random.default_rng(0).integers(0, config.vocab_size, (8, 9))
    batch = {"inputs": jnp.asarray(ids[:, :-1]), "targets": jnp.asarray(ids[:, 1:])}
    objective = OBJECTIVES["causal_lm"]

    def loss_of(attention):
        graphdef = nnx.graphdef(
            GPT2LMHeadModel(dataclasses.replace(config, attention=attention), rngs=nnx.Rngs(0))
        )
        return jax.value_and_grad(lambda p, b: objective(nnx.merge(graphdef, p), b, None)[0])

    device = jax.devices()[0]
    on_one = jax.device_put(params, device), jax.device_put(batch, device)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2))
    rules = sharding.DEFAULT_RULES
    placed = jax.device_put(params, sharding.param_shardings(params, mesh, rules))
    split = jax.device_put(batch, sharding.batch_sharding(mesh, rules))

    def compare(single_attention, sharded_attention) -> tuple[dict, str]:
        single_loss, single_grads = jax.device_get(jax.jit(loss_of(single_attention))(*on_one))
        step = jax.jit(sharding.constrained(loss_of(sharded_attention), mesh, rules))
        sharded_loss, sharded_grads = jax.device_get(step(placed, split))
        diffs = jax.tree.map(lambda a, b: np.max(np.abs(a - b)), single_grads, sharded_grads)
        figures = {
            "single_loss": float(single_loss),
            "sharded_loss": float(sharded_loss),
            "grad_max_abs_diff": float(max(jax.tree.leaves(diffs))),
        }
        return figures, step.lower(placed, split).as_text()

    result, lowered = compare(None, None)
    unconstrained = jax.jit(loss_of(None)).lower(placed, split).as_text()
    result.update(
        devices=len(jax.devices()),
        n_layer=config.n_layer,
        constraints=constraints(lowered),
        constraints_without=constraints(unconstrained),
        pallas={},
    )
    band = A.patterns.band(3)
    for name, xla, pallas in (
        ("dense pallas_tpu", A.Dense(implementation="xla"), A.Dense(implementation="pallas_tpu")),
        (
            "sparse pallas_gpu",
            A.Sparse(band, implementation="xla"),
            A.Sparse(band, implementation="pallas_gpu"),
        ),
    ):
        figures, lowered = compare(xla, pallas)
        result["pallas"][name] = {**figures, "per_shard": lowered.count("sdy.manual_computation")}
    with open(sys.argv[1], "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
