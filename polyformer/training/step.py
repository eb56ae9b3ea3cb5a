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
    """Everything a step changes. step: optimizer steps taken; params: the model's whole state,
    the variables that train and those that stay frozen (a LoRA run's base weights); opt_state:
    the optimizer's, for the trainable variables only; rng: the run's root key (each step folds
    in its number, so a resumed run draws the same dropout masks)."""

    step: jax.Array
    params: nnx.State
    opt_state: optax.OptState
    rng: jax.Array


def init_state(
    params: nnx.State,
    optimizer: optax.GradientTransformation,
    rng,
    trainable: nnx.filterlib.Filter = nnx.Param,
) -> TrainState:
    """The state before the first step; `trainable` selects the variables the optimizer moves
    (nnx.Param: all parameters; lora.LoRAParam: the adapters)."""
    opt_state = optimizer.init(nnx.filter_state(params, trainable))
    return TrainState(jnp.zeros((), jnp.int32), params, opt_state, rng)


def seed_streams(model: nnx.Module, key: jax.Array) -> None:
    """Gives every rng stream the model holds (LoRA's dropout draws from its own) a key split
    from the step's `key`, one per stream: the step, not the stream's own count, decides the
    masks, so a resumed run draws the ones the uninterrupted run did. (The model's own dropout
    draws `fold_in(key, n)` from the call's rngs, which no split key equals.)"""
    streams = [node for _, node in nnx.iter_graph(model) if isinstance(node, nnx.RngStream)]
    if not streams:
        return
    for stream, stream_key in zip(streams, jax.random.split(key, len(streams)), strict=True):
        stream.key.set_value(stream_key)
        stream.count.set_value(jnp.zeros_like(stream.count[...]))


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
    trainable: nnx.filterlib.Filter = nnx.Param,
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """One optimizer step over a batch, as `accumulation_steps` micro-batches whose gradients
    are averaged. Only the variables `trainable` selects are differentiated and updated; the
    rest of `state.params` goes through unchanged. A step whose loss or gradient is not finite
    changes nothing and reports `finite == False` (the trainer then stops)."""

    def micro_loss(params, frozen, batch, rng):
        # copy: `frozen` comes from outside the gradient's trace, and the streams change below.
        model = nnx.merge(graphdef, params, frozen, copy=True)
        seed_streams(model, rng)
        return loss_fn(model, batch, nnx.Rngs(dropout=rng))

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        rng = jax.random.fold_in(state.rng, state.step)
        params, frozen = nnx.split_state(state.params, trainable, ...)
        if accumulation_steps == 1:
            (loss, aux), grads = grad_fn(params, frozen, batch, rng)
        else:

            def accumulate(carry, micro):
                index, micro_batch = micro
                (loss, aux), grads = grad_fn(
                    params, frozen, micro_batch, jax.random.fold_in(rng, index)
                )
                return jax.tree.map(jnp.add, carry, (loss, aux, grads)), None

            micro = _split_micro(batch, accumulation_steps)
            first = jax.tree.map(lambda x: x[0], micro)
            zeros = jax.tree.map(
                jnp.zeros_like, jax.eval_shape(grad_fn, params, frozen, first, rng)
            )
            zeros = (zeros[0][0], zeros[0][1], zeros[1])
            (loss, aux, grads), _ = jax.lax.scan(
                accumulate, zeros, (jnp.arange(accumulation_steps), micro)
            )
            loss, aux, grads = jax.tree.map(lambda x: x / accumulation_steps, (loss, aux, grads))
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = optimizer.update(grads, state.opt_state, params)
        stepped = (optax.apply_updates(params, updates), opt_state, state.step + 1)
        # Non-finite: keep the old state, so the last good parameters are what the trainer saves.
        # The parameter norm below reads the kept parameters, so that XLA fuses each update into
        # its guard (a kernel fewer to compile per parameter).
        params, opt_state, step = jax.tree.map(
            lambda n, o: jnp.where(finite, n, o), stepped, (params, state.opt_state, state.step)
        )
        new = TrainState(step, nnx.merge_state(params, frozen), opt_state, state.rng)
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
