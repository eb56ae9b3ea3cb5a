"""Training: input pipelines (more to come: train state, optimizers, checkpoints, sharding)."""

from polyformer.training import data

__all__ = ["data"]
