"""Causal language modelling: next-token cross-entropy, and perplexity derived from it."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from polyformer.models.gpt.loss import chunked_lm_loss

# exp() of a loss above this overflows nothing but says nothing either: perplexity is capped.
MAX_LOG_PERPLEXITY = 50.0


def causal_lm(model: nnx.Module, batch: dict[str, jax.Array], rngs: nnx.Rngs | None):
    """Next-token cross-entropy. batch: "inputs" and "targets" `[batch, length]` int32, and
    optionally "weights" `[batch, length]` (0 where a target does not count).

    The loss runs over the vocabulary a chunk of tokens at a time (chunked_lm_loss), never
    holding the whole float32 logits and their gradient."""
    out = model(batch["inputs"], output_hidden_states=True, output_logits=False, rngs=rngs)
    losses, predictions = chunked_lm_loss(
        out.hidden_states[-1], model.output_kernel(), batch["targets"]
    )
    weights = batch.get("weights", jnp.ones_like(losses))
    count = jnp.maximum(jnp.sum(weights), 1.0)
    loss = jnp.sum(losses * weights) / count
    accuracy = jnp.sum((predictions == batch["targets"]) * weights) / count
    return loss, {"accuracy": accuracy}


def perplexity(metrics: dict[str, float]) -> dict[str, float]:
    """exp of the mean loss: derived after averaging over batches, since the mean of per-batch
    perplexities is not the perplexity of the mean loss."""
    return {"perplexity": math.exp(min(metrics["loss"], MAX_LOG_PERPLEXITY))}
