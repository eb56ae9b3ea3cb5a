"""Training: run configs (config.py), the data contract and every data config (data/), the
objectives (objectives/), the optimizer (optim.py), the pure train and eval steps (step.py), mesh
sharding (sharding.py), orbax checkpoints (checkpoint.py), metrics and the Trainer that runs them
all (trainer.py)."""

from polyformer.training import data

__all__ = ["data"]
