"""Training objectives: `loss_fn(model, batch, rngs) -> (loss, metrics)` (see step.LossFn)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx


def causal_lm(model: nnx.Module, batch: dict[str, jax.Array], rngs: nnx.Rngs | None):
    """Next-token cross-entropy. batch: "inputs" and "targets" `[batch, length]` int32, and
    optionally "weights" `[batch, length]` (0 where a target does not count)."""
    logits = model(batch["inputs"], rngs=rngs).logits
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    weights = batch.get("weights", jnp.ones_like(losses))
    count = jnp.maximum(jnp.sum(weights), 1.0)
    loss = jnp.sum(losses * weights) / count
    accuracy = jnp.sum((jnp.argmax(logits, -1) == batch["targets"]) * weights) / count
    return loss, {"accuracy": accuracy}


OBJECTIVES = {"causal_lm": causal_lm}
