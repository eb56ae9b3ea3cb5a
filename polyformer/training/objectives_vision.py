"""Vision objectives: image classification (label smoothing, mixup) and CLIP's contrastive loss.

Each objective is a `loss_fn(model, batch, rngs) -> (loss, metrics)` (see step.LossFn); `rngs` is
None in evaluation, which turns augmentation and label smoothing off, so evaluation losses are
plain cross-entropies comparable across runs.

Sharding: the losses are written over the global batch. When the trainer shards the batch over a
device mesh, jit's partitioner inserts the collectives, so the contrastive similarity matrix spans
every image and caption of the global batch (not one device's share, which would be a different,
easier loss) and mixup may pair examples that live on different devices.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

# CLIP clamps its learnable temperature so that logits are scaled by at most 100 (the paper,
# section 2.5: "clipped to prevent scaling the logits by more than 100").
MAX_LOGIT_SCALE = 100.0


# ----------------------------------------------------------------------------------------------
# Image classification


def soft_targets(labels: jax.Array, num_classes: int, label_smoothing: float) -> jax.Array:
    """Integer labels `[batch]` -> target distributions `[batch, num_classes]`:
    `(1 - label_smoothing) * one_hot + label_smoothing / num_classes` (PyTorch's and optax's
    convention)."""
    return optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)


def mixup(key: jax.Array, pixel_values: jax.Array, alpha: float) -> tuple[jax.Array, jax.Array]:
    """Mixup's images (Zhang et al. 2018): every example is blended with the example at the
    mirrored position of the batch, `lam * x + (1 - lam) * x[::-1]`, with one weight
    `lam ~ Beta(alpha, alpha)` for the batch (timm's default "batch" mode). The targets are to be
    mixed the same way: `mix_targets`.

    pixel_values `[batch, ...]` -> (mixed pixel_values, lam)."""
    lam = jax.random.beta(key, alpha, alpha)
    # Pairing by reversal needs no random permutation and, with an odd batch, leaves only the
    # middle example unmixed.
    mixed = lam * pixel_values + (1.0 - lam) * pixel_values[::-1]
    return mixed.astype(pixel_values.dtype), lam


def mix_targets(targets: jax.Array, lam: jax.Array) -> jax.Array:
    """Targets `[batch, classes]` of images mixed by `mixup` with weight `lam`."""
    return lam * targets + (1.0 - lam) * targets[::-1]


def _augmentation_key(rngs: nnx.Rngs) -> jax.Array:
    # The trainer's step rngs carry one stream, "dropout", seeded by fold_in(rng, step): a key
    # from it makes the mixing weight a function of the run seed and the step, so a resumed
    # run mixes as the original did. A caller may give mixup its own stream.
    return rngs.mixup() if "mixup" in rngs else rngs.dropout()


def image_classification(
    label_smoothing: float = 0.0, mixup_alpha: float = 0.0
) -> Callable[[nnx.Module, dict[str, jax.Array], nnx.Rngs | None], tuple[jax.Array, dict]]:
    """Softmax cross-entropy for `ViTForImageClassification`-like models.

    batch: "pixel_values" float `[batch, channels, height, width]` and "labels" int `[batch]`.
    In training (`rngs` given), targets are smoothed by `label_smoothing` and, if `mixup_alpha`
    > 0, images and targets are mixed (see `mixup`). Metrics: "accuracy" (argmax against the
    unmixed labels) and, with mixup, "mixup_lambda".
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if mixup_alpha < 0.0:
        raise ValueError(f"mixup_alpha must be >= 0 (0: no mixup), got {mixup_alpha}")

    def loss_fn(model: nnx.Module, batch: dict[str, jax.Array], rngs: nnx.Rngs | None):
        pixel_values, labels = batch["pixel_values"], batch["labels"]
        training = rngs is not None
        mixing = training and mixup_alpha > 0.0
        metrics = {}
        if mixing:
            pixel_values, lam = mixup(_augmentation_key(rngs), pixel_values, mixup_alpha)
            metrics["mixup_lambda"] = lam
        logits = model(pixel_values=pixel_values, rngs=rngs).logits.astype(jnp.float32)
        targets = soft_targets(labels, logits.shape[-1], label_smoothing if training else 0.0)
        if mixing:
            targets = mix_targets(targets, lam)
        loss = jnp.mean(optax.softmax_cross_entropy(logits, targets))
        metrics["accuracy"] = jnp.mean(jnp.argmax(logits, -1) == labels)
        return loss, metrics

    return loss_fn


# ----------------------------------------------------------------------------------------------
# CLIP


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


OBJECTIVES = {
    "image_classification": image_classification(),
    # DeiT's regularisers at a strength for small sets: smoothing 0.1, mixup Beta(0.2, 0.2).
    "image_classification_mixup": image_classification(label_smoothing=0.1, mixup_alpha=0.2),
    "clip_contrastive": clip_contrastive,
}
