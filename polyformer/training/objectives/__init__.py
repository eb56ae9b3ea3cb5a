"""Training objectives, one module per family of them, and the one table the trainer reads.

An objective is a loss, `loss(model, batch, rngs) -> (scalar loss, metrics)` (see step.LossFn;
`rngs` is None in evaluation), what one example of its batches looks like (`example`, from which
`synthetic` makes random data for compiling and benchmarks) and the metrics derived from the
averaged evaluation metrics (perplexity from the mean loss). An `Objective` is itself a loss
function, so it goes to `step.make_train_step` as it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from polyformer.training.data.synthetic import Example, SyntheticData
from polyformer.training.objectives import clip, ctc, lm, tapas, vision
from polyformer.training.step import LossFn


def _none(metrics: dict[str, float]) -> dict[str, float]:
    del metrics
    return {}


@dataclasses.dataclass(frozen=True)
class Objective:
    """A loss function; `derived(metrics) -> more metrics`, applied to metrics averaged over the
    evaluation batches; and `example(model_config, length)`, the keys and shapes of one example
    of the batches it reads (`length`: tokens, or audio samples, where the model does not fix
    it), which `synthetic` needs."""

    loss: LossFn
    derived: Callable[[dict[str, float]], dict[str, float]] = _none
    example: Callable[[Any, int], Example] | None = None

    def __call__(self, model: nnx.Module, batch: dict[str, jax.Array], rngs: nnx.Rngs | None):
        return self.loss(model, batch, rngs)

    def synthetic(self, model_config: Any, length: int, **kwargs: Any) -> SyntheticData:
        """Random batches of `example`'s shapes for `model_config` (kwargs: SyntheticData's
        counts and seed)."""
        if self.example is None:
            raise ValueError(
                f"objective {getattr(self.loss, '__name__', self.loss)!r} does not say what its "
                "examples look like: give Objective(..., example=...)"
            )
        arrays, tokens = self.example(model_config, length)
        return SyntheticData(arrays, tokens, **kwargs)


OBJECTIVES: dict[str, Objective] = {
    "causal_lm": Objective(lm.causal_lm, lm.perplexity, example=lm.example),
    "image_classification": Objective(vision.image_classification(), example=vision.example),
    # DeiT's regularisers at a strength for small sets: smoothing 0.1, mixup Beta(0.2, 0.2).
    "image_classification_mixup": Objective(
        vision.image_classification(label_smoothing=0.1, mixup_alpha=0.2), example=vision.example
    ),
    "clip_contrastive": Objective(clip.clip_contrastive, example=clip.example),
    "ctc": Objective(ctc.ctc, example=ctc.example),
    "tapas": Objective(tapas.tapas, example=tapas.example),
}

__all__ = ["OBJECTIVES", "Objective", "clip", "ctc", "lm", "tapas", "vision"]
