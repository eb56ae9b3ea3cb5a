"""CLIP's contrastive objective: symmetric InfoNCE over the global batch, temperature clamped.

Sharding: the loss is written over the global batch. When the trainer shards the batch over a
device mesh, jit's partitioner inserts the collectives, so the similarity matrix spans every image
and caption of the global batch (not one device's share, which would be a different, easier loss).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from polyformer.training.data.synthetic import ArraySpec, Example

# CLIP clamps its learnable temperature so that logits are scaled by at most 100 (the paper,
# section 2.5: "clipped to prevent scaling the logits by more than 100").
MAX_LOGIT_SCALE = 100.0


def clip_logits(
    text_embeds: jax.Array,
    image_embeds: jax.Array,
    logit_scale: jax.Array,
    max_scale: float = MAX_LOGIT_SCALE,
) -> jax.Array:
    """logits_per_text `[texts, images]` = `min(exp(logit_scale), max_scale)` times the cosine
    similarities of the (unit-norm) embeddings `[texts, dim]`, `[images, dim]`.

    The clamp is on the log scale, so once the temperature reaches the cap its gradient is zero
    and it stays there, as CLIP's training (which clips the parameter after each step) keeps it.
    """
    scale = jnp.exp(jnp.minimum(logit_scale.astype(jnp.float32), math.log(max_scale)))
    return scale * (text_embeds.astype(jnp.float32) @ image_embeds.astype(jnp.float32).T)


def contrastive_loss(logits_per_text: jax.Array) -> jax.Array:
    """CLIP's symmetric InfoNCE, as Hugging Face's CLIPModel computes it
    (`image_text_contrastive_loss`): the mean of the cross-entropy of each caption over the images
    and of each image over the captions, the pair on the diagonal being the right one.
    logits_per_text `[n, n]` -> scalar."""
    n = logits_per_text.shape[0]
    if logits_per_text.ndim != 2 or logits_per_text.shape[1] != n:
        raise ValueError(
            f"contrastive_loss needs square logits [texts, images], got {logits_per_text.shape}"
        )
    labels = jnp.arange(n)
    caption_loss = optax.softmax_cross_entropy_with_integer_labels(logits_per_text, labels)
    image_loss = optax.softmax_cross_entropy_with_integer_labels(logits_per_text.T, labels)
    return (jnp.mean(caption_loss) + jnp.mean(image_loss)) / 2.0


def clip_contrastive(model: nnx.Module, batch: dict[str, jax.Array], rngs: nnx.Rngs | None):
    """CLIP's contrastive loss over the global batch, with the learnable temperature clamped.

    batch: "input_ids" int `[batch, length]`, "attention_mask" `[batch, length]` and
    "pixel_values" float `[batch, channels, height, width]`; row i's caption describes row i's
    image. The logits are recomputed from the model's normalised `text_embeds`/`image_embeds` and
    its `logit_scale` parameter so that the clamp applies (Hugging Face's CLIPModel does not
    clamp). Metrics: "image_to_text_accuracy", "text_to_image_accuracy" (the right partner is the
    argmax within the batch) and "logit_scale" (the multiplier in use, at most 100).
    """
    out = model(
        input_ids=batch["input_ids"],
        pixel_values=batch["pixel_values"],
        attention_mask=batch["attention_mask"],
        rngs=rngs,
    )
    logit_scale = model.logit_scale[...]
    logits_per_text = clip_logits(out.text_embeds, out.image_embeds, logit_scale)
    labels = jnp.arange(logits_per_text.shape[0])
    metrics = {
        "text_to_image_accuracy": jnp.mean(jnp.argmax(logits_per_text, -1) == labels),
        "image_to_text_accuracy": jnp.mean(jnp.argmax(logits_per_text, 0) == labels),
        "logit_scale": jnp.exp(jnp.minimum(logit_scale, math.log(MAX_LOGIT_SCALE))),
    }
    return contrastive_loss(logits_per_text), metrics


def example(config: Any, length: int) -> Example:
    """A caption-image batch for a CLIPConfig: "input_ids" and an all-ones "attention_mask"
    `[max_position_embeddings]`, "pixel_values" `[3, image_size, image_size]`; `length` is
    unused (captions are the text tower's full length)."""
    del length
    text, size = config.text_config.max_position_embeddings, config.vision_config.image_size
    return Example(
        (
            ArraySpec("input_ids", (text,), "int32", config.text_config.vocab_size),
            ArraySpec("attention_mask", (text,), "int32", 2, 1),
            ArraySpec("pixel_values", (3, size, size), "float32"),
        ),
        text,
    )
