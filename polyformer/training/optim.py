"""The optimizer: AdamW on a warmup + cosine schedule, with global-norm gradient clipping."""

from __future__ import annotations

import dataclasses

import jax
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warmup then cosine decay to `end_lr_ratio * learning_rate`.

    `accumulation_steps` micro-batches make one optimizer step (the train step averages their
    gradients); `grad_clip` is a global-norm bound (None: no clipping). Weight decay skips
    biases, layer-norm parameters and other vectors, as GPT-2 and most recipes do.
    """

    learning_rate: float = 3e-4
    warmup_steps: int = 100
    end_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    accumulation_steps: int = 1

    def __post_init__(self):
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.warmup_steps < 0 or self.accumulation_steps < 1:
            raise ValueError(
                f"need warmup_steps >= 0 and accumulation_steps >= 1, got {self.warmup_steps} "
                f"and {self.accumulation_steps}"
            )
        if not 0 <= self.end_lr_ratio <= 1:
            raise ValueError(f"end_lr_ratio must be in [0, 1], got {self.end_lr_ratio}")


def schedule(config: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Learning rate at each optimizer step: 0 -> peak over warmup, cosine to the end."""
    warmup = min(config.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=config.learning_rate * config.end_lr_ratio,
    )


def _decay_mask(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(config: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    clip = [] if config.grad_clip is None else [optax.clip_by_global_norm(config.grad_clip)]
    return optax.chain(
        *clip,
        optax.adamw(
            schedule(config, total_steps),
            b1=config.b1,
            b2=config.b2,
            eps=config.eps,
            weight_decay=config.weight_decay,
            mask=_decay_mask,
        ),
    )
