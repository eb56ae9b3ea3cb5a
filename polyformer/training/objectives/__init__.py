"""Training objectives, one module per family of them, and the one table the trainer reads.

An objective is a loss, `loss(model, batch, rngs) -> (scalar loss, metrics)` (see step.LossFn;
`rngs` is None in evaluation), and the metrics derived from the averaged evaluation metrics
(perplexity from the mean loss). An `Objective` is itself a loss function, so it goes to
`step.make_train_step` as it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
from flax import nnx

from polyformer.training.objectives import clip, ctc, lm, tapas, vision
from polyformer.training.step import LossFn


def _none(metrics: dict[str, float]) -> dict[str, float]:
    del metrics
    return {}


@dataclasses.dataclass(frozen=True)
class Objective:
    """A loss function and `derived(metrics) -> more metrics`, applied to metrics averaged over
    the evaluation batches."""

    loss: LossFn
    derived: Callable[[dict[str, float]], dict[str, float]] = _none

    def __call__(self, model: nnx.Module, batch: dict[str, jax.Array], rngs: nnx.Rngs | None):
        return self.loss(model, batch, rngs)


OBJECTIVES: dict[str, Objective] = {
    "causal_lm": Objective(lm.causal_lm, lm.perplexity),
    "image_classification": Objective(vision.image_classification()),
    # DeiT's regularisers at a strength for small sets: smoothing 0.1, mixup Beta(0.2, 0.2).
    "image_classification_mixup": Objective(
        vision.image_classification(label_smoothing=0.1, mixup_alpha=0.2)
    ),
    "clip_contrastive": Objective(clip.clip_contrastive),
    "ctc": Objective(ctc.ctc),
    "tapas": Objective(tapas.tapas),
}

__all__ = ["OBJECTIVES", "Objective", "clip", "ctc", "lm", "tapas", "vision"]
