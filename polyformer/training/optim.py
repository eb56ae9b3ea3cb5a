"""The optimizer: AdamW on a warmup + cosine schedule, with global-norm gradient clipping and
optional learning-rate multipliers for named parts of the model."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warmup then cosine decay to `end_lr_ratio * learning_rate`.

    `accumulation_steps` micro-batches make one optimizer step (the train step averages their
    gradients); `grad_clip` is a global-norm bound (None: no clipping). Weight decay skips
    biases, layer-norm parameters and other vectors, as GPT-2 and most recipes do.

    `learning_rate_multipliers` maps parameter paths (dotted: "output_weights", "tapas.pooler")
    to a factor on the schedule for the parameters at or under them (the longest path that
    matches wins), e.g. 10 for new heads on a pretrained encoder; the global-norm clipping stays
    over all gradients together. A path that names no parameter is an error when the optimizer
    state is built. Given as a dict, kept as sorted (path, factor) pairs.
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
    learning_rate_multipliers: Mapping[str, float] | tuple[tuple[str, float], ...] = ()

    def __post_init__(self):
        # Sorted pairs, so that the config stays hashable and prints the same every time.
        pairs = tuple(sorted(dict(self.learning_rate_multipliers).items()))
        bad = [(path, factor) for path, factor in pairs if not factor > 0 or not path]
        if bad:
            raise ValueError(
                f"learning_rate_multipliers must map parameter paths to positive factors, got {bad}"
            )
        object.__setattr__(self, "learning_rate_multipliers", pairs)
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


def _dotted(path) -> str:
    return ".".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def _under(name: str, path: str) -> bool:
    """Whether parameter `name` is at or under the dotted `path`."""
    return name == path or name.startswith(path + ".")


def scale_by_path(multipliers: tuple[tuple[str, float], ...]) -> optax.GradientTransformation:
    """Multiplies the updates of the parameters at or under each dotted path by its factor (the
    longest matching path wins; others are left as they are). Stateless; `init` refuses a path
    that names no parameter."""

    def factor(path) -> float:
        name = _dotted(path)
        matches = [(p, f) for p, f in multipliers if _under(name, p)]
        return max(matches, key=lambda m: len(m[0]))[1] if matches else 1.0

    def init(params):
        names = [_dotted(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        unknown = [p for p, _ in multipliers if not any(_under(n, p) for n in names)]
        # optax.tree_map_params inits with a placeholder that is no tree (no names): only a
        # real parameter tree is checked.
        if names and unknown:
            raise ValueError(
                f"learning_rate_multipliers name {unknown}, which are no parameter paths of the "
                f"model (its top-level ones: {sorted({n.split('.')[0] for n in names})})"
            )
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        scaled = jax.tree_util.tree_map_with_path(lambda path, u: u * factor(path), updates)
        return scaled, state

    return optax.GradientTransformation(init, update)


def make_optimizer(config: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    clip = [] if config.grad_clip is None else [optax.clip_by_global_norm(config.grad_clip)]
    # AdamW's update is -lr * (direction + weight_decay * p): scaling it scales the learning
    # rate of those parameters, weight decay included.
    multipliers = (
        [scale_by_path(config.learning_rate_multipliers)]
        if config.learning_rate_multipliers
        else []
    )
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
        *multipliers,
    )
