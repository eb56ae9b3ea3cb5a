"""Connectionist temporal classification for speech models (Wav2Vec2ForCTC).

`ctc_loss` is optax's CTC loss with transformers' reductions ("mean": each utterance's loss over
its label length, averaged over the batch, as `torch.nn.functional.ctc_loss(reduction="mean")`;
"sum") and its `ctc_zero_infinity`. `ctc` is the objective the trainer calls: frame paddings come
from the audio's attention mask through the model's feature-encoder length arithmetic, label
paddings from negative labels (transformers pads CTC labels with -100).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from polyformer.models.wav2vec2.model import feat_extract_output_lengths, frame_mask
from polyformer.training.data.synthetic import ArraySpec, Example

REDUCTIONS = ("mean", "sum")


def ctc_feasible(labels: jax.Array, label_paddings: jax.Array, frames: jax.Array) -> jax.Array:
    """Whether each label sequence fits in its frames: CTC needs one frame per label plus one
    blank between each pair of equal neighbours. labels, label_paddings `[batch, labels]`,
    frames `[batch]` -> bool `[batch]`."""
    real = 1.0 - label_paddings
    repeats = jnp.sum((labels[:, 1:] == labels[:, :-1]) * real[:, 1:] * real[:, :-1], axis=-1)
    return jnp.sum(real, axis=-1) + repeats <= frames


def ctc_loss(
    logits: jax.Array,
    logit_paddings: jax.Array,
    labels: jax.Array,
    label_paddings: jax.Array,
    *,
    blank_id: int = 0,
    reduction: str = "mean",
    zero_infinity: bool = False,
) -> jax.Array:
    """The batch's CTC loss (a scalar).

    Args:
      logits: `[batch, frames, vocab]` unnormalised scores.
      logit_paddings: `[batch, frames]`, 1.0 on padded frames.
      labels: `[batch, labels]` int ids (any value where padded).
      label_paddings: `[batch, labels]`, 1.0 on padding.
      blank_id: the CTC blank (Wav2Vec2: the pad token, 0).
      reduction: "mean" divides each utterance's loss by its label count (at least 1), then
        averages over the batch; "sum" adds the utterances' losses.
      zero_infinity: utterances whose labels cannot fit in their frames count 0 (as PyTorch's
        flag); otherwise they count optax's large finite stand-in for infinity.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    logits = logits.astype(jnp.float32)
    per_utterance = optax.ctc_loss(
        logits, logit_paddings, labels, label_paddings, blank_id=blank_id
    )
    if zero_infinity:
        frames = jnp.sum(1.0 - logit_paddings, axis=-1)
        feasible = ctc_feasible(labels, label_paddings, frames)
        per_utterance = jnp.where(feasible, per_utterance, 0.0)
    if reduction == "sum":
        return jnp.sum(per_utterance)
    label_lengths = jnp.maximum(jnp.sum(1.0 - label_paddings, axis=-1), 1.0)
    return jnp.mean(per_utterance / label_lengths)


def ctc(model: nnx.Module, batch: dict[str, jax.Array], rngs: nnx.Rngs | None):
    """CTC objective for Wav2Vec2ForCTC with the reduction and zero_infinity of its config.

    batch: "input_values" float32 `[batch, samples]`, optionally "attention_mask" `[batch,
    samples]` (1 on real samples), and "labels" int32 `[batch, labels]`, negative (-100) on
    padding. Metrics: "blank_fraction", the share of real frames whose argmax is the blank (near
    1 early in training, when a CTC model emits only blanks).
    """
    config = model.config
    mask = batch.get("attention_mask")
    logits = model(batch["input_values"], attention_mask=mask, rngs=rngs).logits
    if mask is None:
        logit_paddings = jnp.zeros(logits.shape[:2], jnp.float32)
    else:
        logit_paddings = 1.0 - frame_mask(config, mask, logits.shape[1]).astype(jnp.float32)
    labels = batch["labels"]
    label_paddings = (labels < 0).astype(jnp.float32)
    loss = ctc_loss(
        logits,
        logit_paddings,
        jnp.maximum(labels, 0),
        label_paddings,
        blank_id=config.pad_token_id,
        reduction=config.ctc_loss_reduction,
        zero_infinity=config.ctc_zero_infinity,
    )
    real = 1.0 - logit_paddings
    blanks = (jnp.argmax(logits, axis=-1) == config.pad_token_id) * real
    return loss, {"blank_fraction": jnp.sum(blanks) / jnp.maximum(jnp.sum(real), 1.0)}


def example(config: Any, length: int) -> Example:
    """A CTC batch for a Wav2Vec2Config: "input_values" `[length]` samples and "labels" of a
    quarter as many ids (at least one) as the feature encoder makes frames, so the loss is
    feasible; ids from 1 (0 is the blank)."""
    labels = max(1, int(feat_extract_output_lengths(config, length)) // 4)
    return Example(
        (
            ArraySpec("input_values", (length,), "float32"),
            ArraySpec("labels", (labels,), "int32", config.vocab_size, 1),
        ),
        length,
    )
