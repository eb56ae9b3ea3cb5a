"""Small pieces every family's model uses: torch's LayerNorm, the training-mode rngs check, and
the layer stack with its remat, hidden states and attention probabilities."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from polyformer.attention.layer import MultiHeadAttention, linear, logical
from polyformer.attention.layout import constrain


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
# The logical axes of an MLP's hidden activation `[batch, length, intermediate]` (constrain).
MLP_HIDDEN = ("batch", "length", "mlp")

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


# The logical name of a LayerStack's leading axis: no sharding rule names it, so every device
# holds all layers of the parameters it holds (fsdp and tensor split the other axes).
LAYERS = "layers"


class LayerStack(nnx.Module):
    """`num_layers` layers of one structure as one module (ModelConfig.scan_layers): `layer` is
    one layer whose every parameter has a leading axis `[num_layers, ...]` named LAYERS, and
    `run_layers` runs it under a scan (`scan_layers`), so a compiled program holds the layer's
    computation once whatever the depth. Checkpoints name the layers one by one
    (`convert.unstack_layers`)."""

    def __init__(
        self, make_layer: Callable[[nnx.Rngs], nnx.Module], num_layers: int, *, rngs: nnx.Rngs
    ):
        @nnx.split_rngs(splits=num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: LAYERS})
        def create(rngs: nnx.Rngs) -> nnx.Module:
            return make_layer(rngs)

        self.layer = create(rngs)
        self.num_layers = num_layers


def layer_stack(
    make_layer: Callable[[nnx.Rngs], nnx.Module], num_layers: int, *, scan: bool, rngs: nnx.Rngs
) -> nnx.List | LayerStack:
    """`num_layers` layers `make_layer(rngs)`, each initialised from its own draws: a LayerStack
    when `scan` (ModelConfig.scan_layers), else an nnx.List of them (numbered state paths)."""
    if scan:
        return LayerStack(make_layer, num_layers, rngs=rngs)
    return nnx.List([make_layer(rngs) for _ in range(num_layers)])


def layer_stacks(model: nnx.Module) -> dict[tuple[Any, ...], int]:
    """The state path of every LayerStack in `model` -> its number of layers."""
    return {
        path: node.num_layers
        for path, node in nnx.iter_graph(model)
        if isinstance(node, LayerStack)
    }


def run_layers(
    layers: Sequence[nnx.Module] | LayerStack,
    x: jax.Array,
    remat: str,
    *args: Any,
    per_layer: tuple[Sequence[int | float], ...] = (),
    output_attentions: bool = False,
    after: Callable[[jax.Array, jax.Array, nnx.Rngs | None], jax.Array] | None = None,
    **options: Any,
) -> tuple[jax.Array, tuple[jax.Array, ...], tuple[jax.Array, ...] | None]:
    """A stack of layers, each called as `layer(x, *args, *its per_layer values,
    output_attentions=..., **options)` under `remat_layer`: args are arrays, None or the rngs
    (traced by remat), options Python values (static, as output_attentions is under jit), and
    `per_layer` holds sequences of Python numbers, one per layer (GPT-2's layer index). A
    layer returns its output, or (output, attention probabilities) when output_attentions.
    `after(x, out, rngs)`, when given, makes the next x from a layer's input and output and the
    nnx.Rngs among args (LayerDrop).

    A LayerStack runs under a scan (`scan_layers`): the rngs among args are split so that every
    layer draws its own dropout, a layer gets its per_layer values as scalar arrays (traced, not
    Python numbers), and the outputs are the unscanned stack's.

    Returns (the last x, the hidden states: x then every layer's x, len(layers) + 1 arrays
    `[batch, length, hidden]`, and when output_attentions each layer's probabilities `[batch,
    heads, q_length, k_length]`, else None)."""

    def runner(values: tuple[Any, ...]) -> Callable[..., Any]:
        # Closed over, not arguments: remat would trace a Python number.
        return remat_layer(
            lambda layer, *a: layer(*a, *values, output_attentions=output_attentions, **options),
            remat,
        )

    if isinstance(layers, LayerStack):
        stacked = tuple(jnp.asarray(values) for values in per_layer)
        return _scan_layers(layers, x, runner, args, stacked, output_attentions, after)
    rngs = _rngs_among(args)
    hidden, attentions = [x], []
    for i, layer in enumerate(layers):
        out = runner(tuple(values[i] for values in per_layer))(layer, x, *args)
        if output_attentions:
            out, probs = out
            attentions.append(probs)
        x = out if after is None else after(x, out, rngs)
        hidden.append(x)
    return x, tuple(hidden), tuple(attentions) if output_attentions else None


def _rngs_among(args: Sequence[Any]) -> nnx.Rngs | None:
    return next((a for a in args if isinstance(a, nnx.Rngs)), None)


def _scan_layers(
    stack: LayerStack,
    x: jax.Array,
    runner: Callable[[tuple[Any, ...]], Callable[..., Any]],
    args: tuple[Any, ...],
    per_layer: tuple[jax.Array, ...],
    output_attentions: bool,
    after: Callable[[jax.Array, jax.Array, nnx.Rngs | None], jax.Array] | None,
) -> tuple[jax.Array, tuple[jax.Array, ...], tuple[jax.Array, ...] | None]:
    """run_layers over a LayerStack."""

    def body(layer, x, values, *layer_args):
        out = runner(values)(layer, x, *layer_args)
        probs = None
        if output_attentions:
            out, probs = out
        x = out if after is None else after(x, out, _rngs_among(layer_args))
        return x, (x, probs)

    first = x
    x, (hidden, probs) = scan_layers(stack, body, x, per_layer, *args)
    hidden = (first, *(hidden[i] for i in range(stack.num_layers)))
    if output_attentions:
        return x, hidden, tuple(probs[i] for i in range(stack.num_layers))
    return x, hidden, None


# Whether scans over layers unroll (`unrolled_layers`).
_UNROLL: ContextVar[bool] = ContextVar("unroll", default=False)


@contextlib.contextmanager
def unrolled_layers() -> Iterator[None]:
    """Within the block, LayerStacks trace as straight-line code, every layer its own copy of
    the computation: XLA's cost analysis counts a loop's body once, so FLOP counts of scanned
    layers (the trainer's MFU) are taken from the unrolled program."""
    token = _UNROLL.set(True)
    try:
        yield
    finally:
        _UNROLL.reset(token)


def scan_layers(
    stack: LayerStack,
    fn: Callable[..., tuple[jax.Array, Any]],
    x: jax.Array,
    xs: Any,
    *args: Any,
) -> tuple[jax.Array, Any]:
    """`x, y = fn(layer, x, layer's xs, *args)` for each layer of the stack in turn, under
    jax.lax.scan (the program holds fn once).

    Args:
      xs: a pytree of arrays `[num_layers, ...]`, each layer given its slice (a decoding cache),
        or None.
      args: the same for every layer, except each nnx.Rngs among them: split, so that every
        layer draws its own keys.

    Returns (the last x, every layer's y stacked `[num_layers, ...]`).
    """
    graphdef, params = nnx.split(stack.layer)
    # A pure jax.lax.scan over split state, not nnx.scan: the model may have been merged outside
    # an enclosing jax loop (generation's while_loop), which nnx's transforms refuse.
    split = [i for i, a in enumerate(args) if isinstance(a, nnx.Rngs)]
    with contextlib.ExitStack() as restore:
        for i in split:
            restore.enter_context(nnx.split_rngs(args[i], splits=stack.num_layers))
        rngs = [nnx.split(args[i]) for i in split]

        def body(x, inputs):
            layer_params, layer_xs, rng_states = inputs
            layer_args = list(args)
            for i, (rng_graph, _), state in zip(split, rngs, rng_states, strict=True):
                layer_args[i] = nnx.merge(rng_graph, state)
            return fn(nnx.merge(graphdef, layer_params), x, layer_xs, *layer_args)

        rng_states = [state for _, state in rngs]
        return jax.lax.scan(body, x, (params, xs, rng_states), unroll=_UNROLL.get())


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
