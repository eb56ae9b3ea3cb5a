"""The causal LM loss over the vocabulary in chunks of tokens (MaxText's vocabulary tiling).

The plain loss makes the float32 logits `[batch, length, vocab]`, their softmax and their
gradient whole: at GPT-2's 50257 words that is about 0.6 GB per 1024-token sequence, more than
all its layers' activations. Here only one chunk's logits exist at a time, forward and backward
(the backward pass recomputes them), and the loss is the same.

A chunk is a run of positions of every row, not a run of flattened tokens: on a mesh the batch
stays split over the devices through the loop, and each device computes the logits of its own
rows only. (Chunks of flattened tokens would each sit on one device, so GSPMD gathers the whole
hidden state onto every device and each computes every chunk.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from polyformer.attention import layout


def chunked_lm_loss(
    hidden: jax.Array, kernel: jax.Array, targets: jax.Array, *, chunk: int = 1024
) -> tuple[jax.Array, jax.Array]:
    """Cross-entropy of the logits `hidden @ kernel` against `targets`, about `chunk` tokens of
    each device's rows at a time.

    hidden `[batch, length, embed]` (the output head's input, after the final LayerNorm);
    kernel `[embed, vocab]` (the output head's, e.g. wte.T when tied); targets
    `[batch, length]` int. Returns float32 losses `[batch, length]` (-log softmax at the target)
    and the argmax predictions `[batch, length]`, as the whole logits would give them.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of tokens, got {chunk}")
    batch, length, embed = hidden.shape
    rows = layout.local_shape(("batch",), (batch,))[0]  # this device's rows of the batch
    positions = min(length, max(1, chunk // rows))
    pad = -length % positions
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
    kernel = kernel.astype(hidden.dtype)

    # Checkpointed, so that the backward pass recomputes one chunk's logits instead of keeping all.
    @jax.checkpoint
    def one_chunk(kernel: jax.Array, h: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = jnp.dot(h, kernel, preferred_element_type=jnp.float32)
        logits = layout.constrain(logits, ("batch", "length", "vocab"))
        target_logit = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
        return jax.nn.logsumexp(logits, axis=-1) - target_logit, jnp.argmax(logits, axis=-1)

    # [batch, n * positions, ...] -> [n, batch, positions, ...]
    def chunks(x: jax.Array) -> jax.Array:
        return jnp.moveaxis(x.reshape(batch, -1, positions, *x.shape[2:]), 1, 0)

    losses, predictions = jax.lax.map(
        lambda chunk_: one_chunk(kernel, *chunk_), (chunks(hidden), chunks(targets))
    )

    def whole(x: jax.Array) -> jax.Array:  # [n, batch, positions] -> [batch, length]
        return jnp.moveaxis(x, 0, 1).reshape(batch, -1)[:, :length]

    return whole(losses), whole(predictions)
