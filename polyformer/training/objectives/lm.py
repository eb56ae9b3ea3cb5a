"""Causal language modelling: next-token cross-entropy, and perplexity derived from it."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx

# exp() of a loss above this overflows nothing but says nothing either: perplexity is capped.
MAX_LOG_PERPLEXITY = 50.0


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


def perplexity(metrics: dict[str, float]) -> dict[str, float]:
    """exp of the mean loss: derived after averaging over batches, since the mean of per-batch
    perplexities is not the perplexity of the mean loss."""
    return {"perplexity": math.exp(min(metrics["loss"], MAX_LOG_PERPLEXITY))}
