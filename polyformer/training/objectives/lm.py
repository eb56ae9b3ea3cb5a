"""Causal language modelling: next-token cross-entropy, and perplexity derived from it."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from polyformer.models.gpt.loss import chunked_lm_loss
from polyformer.training.data.synthetic import Example, token_windows

# exp() of a loss above this overflows nothing but says nothing either: perplexity is capped.
MAX_LOG_PERPLEXITY = 50.0


def causal_lm(model: nnx.Module, batch: dict[str, jax.Array], rngs: nnx.Rngs | None):
    """Next-token cross-entropy. batch: "inputs" and "targets" `[batch, length]` int32, and
    optionally "weights" `[batch, length]` (0 where a target does not count).

    Packed rows (several documents end to end, as `TextData(pack=True)` gives them) add
    "segment_ids" and "positions" `[batch, length]` int32, each document's own, so that a token
    attends only to its document; their "weights" are 0 at each document's last token, whose
    target begins the next document. Each document's loss is then the one it has alone.

    The loss runs over the vocabulary a chunk of tokens at a time (chunked_lm_loss), never
    holding the whole float32 logits and their gradient."""
    if "segment_ids" in batch and "weights" not in batch:
        raise ValueError(
            "a batch with segment_ids needs weights that are 0 at each document's last token "
            "(its target is the next document's first), as TextData(pack=True) gives them"
        )
    out = model(
        batch["inputs"],
        position_ids=batch.get("positions"),
        segment_ids=batch.get("segment_ids"),
        output_hidden_states=True,
        output_logits=False,
        rngs=rngs,
    )
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


def example(config: Any, length: int) -> Example:
    """A causal-LM batch: "inputs" and "targets" `[length]` token ids of `config`'s vocabulary."""
    return Example(token_windows(length, config.vocab_size).arrays, length)
