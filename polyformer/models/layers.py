"""Small pieces every family's model uses: torch's LayerNorm, the training-mode rngs check, and
the layer stack with its remat, hidden states and attention probabilities."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any

import jax
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from polyformer.attention.layer import MultiHeadAttention, linear, logical


def layer_norm(width: int, epsilon: float, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    """torch.nn.LayerNorm's computation over the last axis `[..., width]`."""
    return nnx.LayerNorm(
        width,
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=param_dtype,
        # E[(x - mean)^2] as torch computes it: E[x^2] - mean^2 loses digits on the residual stream.
        use_fast_variance=False,
        scale_init=logical(nnx.initializers.ones_init(), ("embed",)),
        bias_init=logical(nnx.initializers.zeros_init(), ("embed",)),
        rngs=rngs,
    )


def training_rngs(model: nnx.Module, rngs: nnx.Rngs | None) -> nnx.Rngs | None:
    """The rngs a model's call uses for dropout: None in evaluation mode (`model.deterministic`,
    which model.train() / model.eval() flip); required in training mode."""
    if model.deterministic:
        return None
    if rngs is None:
        raise ValueError("the model is in training mode: pass rngs=nnx.Rngs(dropout=...)")
    return rngs


# What remat="minimal" keeps of a layer: the outputs every layer names with checkpoint_name.
ATTENTION_OUTPUT = "attention_output"
MLP_OUTPUT = "mlp_output"

# ModelConfig.remat -> the jax.checkpoint policy (None: save nothing but the layer's input).
_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "minimal": jax.checkpoint_policies.save_only_these_names(ATTENTION_OUTPUT, MLP_OUTPUT),
}


def remat_layer(call: Callable[..., Any], remat: str) -> Callable[..., Any]:
    """`call(layer, *args)`, one layer of a stack, rematerialised as ModelConfig.remat says:
    unchanged for "none"; otherwise under nnx.remat, so the backward pass recomputes what the
    policy does not save and a stack keeps, per layer, its input and the saved values only.
    Every remat gives the same values and gradients. The layer's output `[batch, length, embed]`
    (the first item, when the layer returns it with its attention probabilities) is constrained
    to its logical layout (`constrain`)."""
    run = call if remat == "none" else nnx.remat(call, policy=_REMAT_POLICIES[remat])

    def constrained(layer, *args):
        out = run(layer, *args)
        if isinstance(out, tuple):
            return (constrain(out[0], ("batch", "length", "embed")), *out[1:])
        return constrain(out, ("batch", "length", "embed"))

    return constrained


def run_layers(
    layers: Sequence[nnx.Module],
    x: jax.Array,
    remat: str,
    *args: Any,
    output_attentions: bool = False,
    after: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    **options: Any,
) -> tuple[jax.Array, tuple[jax.Array, ...], tuple[jax.Array, ...] | None]:
    """A stack of layers, each called as `layer(x, *args, output_attentions=..., **options)`
    under `remat_layer`: args are arrays (traced by remat), options Python values (static, as
    output_attentions is under jit). A layer returns its output, or (output, attention
    probabilities) when output_attentions. `after(x, out)`, when given, makes the next x from a
    layer's input and output (LayerDrop).

    Returns (the last x, the hidden states: x then every layer's x, len(layers) + 1 arrays
    `[batch, length, hidden]`, and when output_attentions each layer's probabilities `[batch,
    heads, q_length, k_length]`, else None)."""
    run = remat_layer(
        lambda layer, *a: layer(*a, output_attentions=output_attentions, **options), remat
    )
    hidden, attentions = [x], []
    for layer in layers:
        out = run(layer, x, *args)
        if output_attentions:
            out, probs = out
            attentions.append(probs)
        x = out if after is None else after(x, out)
        hidden.append(x)
    return x, tuple(hidden), tuple(attentions) if output_attentions else None


def attend(
    attention: MultiHeadAttention, x: jax.Array, *, output_attentions: bool, **kwargs: Any
) -> tuple[jax.Array, jax.Array | None]:
    """`attention(x, **kwargs)`, named ATTENTION_OUTPUT (kept by remat="minimal"), and its
    probabilities `[batch, heads, q_length, k_length]` when output_attentions (else None): a
    layer's attention call, either way."""
    if output_attentions:
        out, probs = attention(x, output_attentions=True, **kwargs)
    else:
        out, probs = attention(x, **kwargs), None
    return checkpoint_name(out, ATTENTION_OUTPUT), probs


def layer_output(x: jax.Array, probs: jax.Array | None) -> jax.Array | tuple[jax.Array, jax.Array]:
    """What a layer returns to `run_layers`: x, or (x, probs) when it was asked for them."""
    return x if probs is None else (x, probs)


# Pins an activation to the devices by its logical axes while a step traces: set by the trainer
# for its mesh and rules (training.sharding.constrained); None leaves every layout to XLA.
_CONSTRAIN: ContextVar[Callable[[jax.Array, tuple[str | None, ...]], jax.Array] | None] = (
    ContextVar("constrain", default=None)
)


@contextlib.contextmanager
def sharding_constraints(
    pin: Callable[[jax.Array, tuple[str | None, ...]], jax.Array],
) -> Iterator[None]:
    """Within the block, `constrain(x, axes)` is `pin(x, axes)`."""
    token = _CONSTRAIN.set(pin)
    try:
        yield
    finally:
        _CONSTRAIN.reset(token)


def constrain(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
    """x laid out by its logical axes (one name or None per dimension, as parameters name theirs:
    "batch", "length", "embed", "mlp", ...), so that GSPMD does not guess the layout of the
    activations between layers; x itself outside `sharding_constraints` (no mesh)."""
    pin = _CONSTRAIN.get()
    return x if pin is None else pin(x, axes)


def dense_head(config: Any, width: int, rngs: nnx.Rngs, *, dtype: Any = None) -> nnx.Linear:
    """A hidden_size -> width dense layer initialised normal(initializer_range), as BERT-style
    poolers and classifiers are; `config` an EncoderConfig, computing in `dtype` (default its
    dtype)."""
    return linear(
        config.hidden_size,
        width,
        ("embed", None),
        kernel_init=nnx.initializers.normal(config.initializer_range),
        dtype=config.dtype if dtype is None else dtype,
        param_dtype=config.param_dtype,
        rngs=rngs,
    )
