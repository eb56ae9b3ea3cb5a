"""Forward-mode autodiff (jax.jvp, jax.linearize) through every family's tiny model, checked
against reverse mode: <J t, c> must equal <t, J^T c> for random t and c."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from polyformer import hub
from tests import tiny_runs

# The model's inputs among each family's batch keys (causal_lm calls its ids "inputs").
INPUTS = {
    "gpt2": {"inputs": "input_ids"},
    "vit": {"pixel_values": "pixel_values"},
    "clip": {k: k for k in ("input_ids", "attention_mask", "pixel_values")},
    "wav2vec2": {"input_values": "input_values"},
    "tapas": {k: k for k in ("input_ids", "attention_mask", "token_type_ids")},
}


def _logits(family: str):
    """(f(params) -> float32 output, params) of the family's tiny model on a random batch."""
    config = tiny_runs.run_config(family)
    model = hub.FAMILIES[family].build(config.model, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = config.data.load().train
    kwargs = {name: jnp.asarray(batch[key][:2]) for key, name in INPUTS[family].items()}

    def f(params):
        out = nnx.merge(graphdef, params, rest)(**kwargs)
        return (out.logits_per_text if family == "clip" else out.logits).astype(jnp.float32)

    return f, params


def _random_like(tree, seed):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    drawn = [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
    return treedef.unflatten(drawn)


def _dot(a, b) -> float:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return sum(float(jnp.vdot(x, y)) for x, y in pairs)


@pytest.mark.parametrize("family", tiny_runs.FAMILIES)
def test_jvp_and_linearize_agree_with_reverse_mode(family):
    f, params = _logits(family)
    tangent = _random_like(params, 1)

    @jax.jit  # one compile for the three transforms
    def transforms(p, t):
        out, jvp_out = jax.jvp(f, (p,), (t,))
        lin_out, f_lin = jax.linearize(f, p)
        cotangent = jax.random.normal(jax.random.key(2), out.shape)
        (vjp_in,) = jax.vjp(f, p)[1](cotangent)
        return out, jvp_out, lin_out, f_lin(t), cotangent, vjp_in

    out, jvp_out, lin_out, lin_tangent, cotangent, vjp_in = transforms(params, tangent)
    forward = float(jnp.vdot(jvp_out, cotangent))
    # float32 sums in another order: differences relative to the largest tangent.
    scale = float(jnp.max(jnp.abs(jvp_out)))
    np.testing.assert_allclose(lin_out, out, rtol=1e-6, atol=1e-6 * float(jnp.max(jnp.abs(out))))
    np.testing.assert_allclose(lin_tangent, jvp_out, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(forward, _dot(tangent, vjp_in), rtol=1e-4)
    assert abs(forward) > 0  # the tangent reaches the output
