"""Image classification objectives for ViT: softmax cross-entropy with label smoothing and mixup.

`image_classification(...)` makes a `loss_fn(model, batch, rngs) -> (loss, metrics)` (see
step.LossFn); `rngs` is None in evaluation, which turns augmentation and label smoothing off, so
evaluation losses are plain cross-entropies comparable across runs.

Sharding: the loss is written over the global batch. When the trainer shards the batch over a
device mesh, jit's partitioner inserts the collectives, so mixup may pair examples that live on
different devices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from polyformer.training.data.synthetic import ArraySpec, Example


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


def example(config: Any, length: int) -> Example:
    """An image classification batch for a ViTConfig: "pixel_values" `[channels, image_size,
    image_size]` and "labels" `[]`; `length` is unused (the patches follow from the image)."""
    del length
    size = config.image_size
    return Example(
        (
            ArraySpec("pixel_values", (config.num_channels, size, size), "float32"),
            ArraySpec("labels", (), "int32", config.num_labels),
        ),
        (size // config.patch_size) ** 2 + 1,
    )
