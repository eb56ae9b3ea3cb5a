"""The train and eval steps: pure functions `(state, batch) -> (state, metrics)`, compiled once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

# loss_fn(model, batch, rngs) -> (scalar loss, dict of scalar metrics). rngs is None in eval.
LossFn = Callable[[nnx.Module, dict[str, jax.Array], nnx.Rngs | None], tuple[jax.Array, dict]]


@flax.struct.dataclass
class TrainState:
    """Everything a step changes. step: optimizer steps taken; rng: the run's root key (each step
    folds in its number, so a resumed run draws the same dropout masks)."""

    step: jax.Array
    params: nnx.State
    opt_state: optax.OptState
    rng: jax.Array


def init_state(params: nnx.State, optimizer: optax.GradientTransformation, rng) -> TrainState:
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), rng)


def _split_micro(batch: dict[str, jax.Array], n: int) -> dict[str, jax.Array]:
    """`[batch, ...]` -> `[n, batch // n, ...]` for gradient accumulation."""
    size = next(iter(batch.values())).shape[0]
    if size % n:
        raise ValueError(f"batch of {size} does not split into {n} accumulation steps")
    return jax.tree.map(lambda x: x.reshape(n, size // n, *x.shape[1:]), batch)


def make_train_step(
    graphdef: nnx.GraphDef,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    accumulation_steps: int = 1,
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """One optimizer step over a batch, as `accumulation_steps` micro-batches whose gradients
    are averaged. A step whose loss or gradient is not finite changes nothing and reports
    `finite == False` (the trainer then stops)."""

    def micro_loss(params, batch, rng):
        model = nnx.merge(graphdef, params)
        return loss_fn(model, batch, nnx.Rngs(dropout=rng))

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        rng = jax.random.fold_in(state.rng, state.step)
        if accumulation_steps == 1:
            (loss, aux), grads = grad_fn(state.params, batch, rng)
        else:

            def accumulate(carry, micro):
                index, micro_batch = micro
                (loss, aux), grads = grad_fn(
                    state.params, micro_batch, jax.random.fold_in(rng, index)
                )
                return jax.tree.map(jnp.add, carry, (loss, aux, grads)), None

            micro = _split_micro(batch, accumulation_steps)
            first = jax.tree.map(lambda x: x[0], micro)
            zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, state.params, first, rng))
            zeros = (zeros[0][0], zeros[0][1], zeros[1])
            (loss, aux, grads), _ = jax.lax.scan(
                accumulate, zeros, (jnp.arange(accumulation_steps), micro)
            )
            loss, aux, grads = jax.tree.map(lambda x: x / accumulation_steps, (loss, aux, grads))
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = TrainState(state.step + 1, params, opt_state, state.rng)
        # Non-finite: keep the old state, so the last good parameters are what the trainer saves.
        new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
        metrics = dict(
            aux, loss=loss, grad_norm=grad_norm, param_norm=optax.tree.norm(params), finite=finite
        )
        return new, metrics

    return train_step


def make_eval_step(graphdef: nnx.GraphDef, loss_fn: LossFn):
    """`(params, batch) -> metrics` with the model in evaluation mode."""

    def eval_step(params: nnx.State, batch: dict[str, jax.Array]) -> dict[str, Any]:
        loss, aux = loss_fn(nnx.merge(graphdef, params), batch, None)
        return dict(aux, loss=loss)

    return eval_step
