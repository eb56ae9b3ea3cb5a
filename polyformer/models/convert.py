"""Declarative checkpoint conversion, shared by every model family.

A family's converter is a `Table`: one `Entry` per Hugging Face tensor, naming the parameters of
ours that it fills and the transform each way. `load` is a strict merge that reports every
missing, unexpected and wrong-shape tensor in one error; `save` runs the same table backwards, so
the two are exact inverses by construction.

State paths are nnx's flat paths, e.g. `("h", 0, "attn", "query", "kernel")`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from polyformer.checkpoint_io import CheckpointError
from polyformer.models.layers import layer_stacks

Path = tuple[str | int, ...]


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint whose tensors do not fit the model; lists every problem at once."""

    def __init__(
        self,
        source: str,
        missing: list[str],
        unexpected: list[str],
        wrong_shape: list[str],
        wrong_dtype: list[str] | None = None,
    ):
        self.missing, self.unexpected, self.wrong_shape = missing, unexpected, wrong_shape
        self.wrong_dtype = wrong_dtype or []
        lines = [f"{source} does not fit the model:"]
        for title, names in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", wrong_shape),
            ("not floating-point", self.wrong_dtype),
        ):
            if names:
                lines.append(f"  {title} ({len(names)}):")
                lines.extend(f"    {name}" for name in names)
        super().__init__("\n".join(lines))


@dataclasses.dataclass(frozen=True)
class Entry:
    """One Hugging Face tensor <-> one or more of our parameters.

    Attributes:
      hf: the tensor's name in the Hugging Face state dict.
      ours: the state paths it fills.
      to_ours: HF tensor -> tuple of our arrays, one per path in `ours`.
      to_hf: our arrays (one argument per path) -> the HF tensor.
    """

    hf: str
    ours: tuple[Path, ...]
    to_ours: Callable[[jax.Array], tuple[jax.Array, ...]]
    to_hf: Callable[..., jax.Array]


def copy(hf: str, path: Path) -> Entry:
    """Same layout on both sides."""
    return Entry(hf, (path,), lambda x: (x,), lambda x: x)


def transpose(hf: str, path: Path) -> Entry:
    """A 2-D weight stored transposed: torch `nn.Linear` is [out, in], nnx.Linear [in, out]."""
    return Entry(hf, (path,), lambda x: (x.T,), lambda x: x.T)


def split(hf: str, paths: tuple[Path, ...], axis: int) -> Entry:
    """One fused HF tensor cut into equal parts along `axis` (e.g. GPT-2's c_attn -> q, k, v)."""
    return Entry(
        hf,
        paths,
        lambda x: tuple(jnp.split(x, len(paths), axis=axis)),
        lambda *parts: jnp.concatenate(parts, axis=axis),
    )


def linear(hf: str, path: Path, *, bias: bool = True, transposed: bool = True) -> list[Entry]:
    """A torch nn.Linear (`{hf}.weight` [out, in], `{hf}.bias`) <-> an nnx.Linear at `path`
    (kernel [in, out], bias). transposed=False: HF stores the weight [in, out] already (GPT-2's
    Conv1D)."""
    weight = (transpose if transposed else copy)(f"{hf}.weight", (*path, "kernel"))
    return [weight, copy(f"{hf}.bias", (*path, "bias"))] if bias else [weight]


def layer_norm(hf: str, path: Path) -> list[Entry]:
    """A torch LayerNorm or GroupNorm (`weight`, `bias`) <-> nnx's (`scale`, `bias`)."""
    return [copy(f"{hf}.weight", (*path, "scale")), copy(f"{hf}.bias", (*path, "bias"))]


def conv(hf: str, path: Path, *, bias: bool = True) -> list[Entry]:
    """A torch ConvNd (weight [out, in, *window]) <-> an nnx.Conv (kernel [*window, in, out])."""

    def to_ours(x):
        return (jnp.transpose(x, (*range(2, x.ndim), 1, 0)),)

    def to_hf(x):
        return jnp.transpose(x, (x.ndim - 1, x.ndim - 2, *range(x.ndim - 2)))

    weight = Entry(f"{hf}.weight", ((*path, "kernel"),), to_ours, to_hf)
    return [weight, copy(f"{hf}.bias", (*path, "bias"))] if bias else [weight]


def embedding(hf: str, path: Path) -> list[Entry]:
    """A torch nn.Embedding (`{hf}.weight` [vocab, width]) <-> an nnx.Embed at `path`."""
    return [copy(f"{hf}.weight", (*path, "embedding"))]


def reshape(hf: str, path: Path, hf_shape: tuple[int, ...], shape: tuple[int, ...]) -> Entry:
    """A tensor stored with a different shape (same element order) on each side."""
    return Entry(hf, (path,), lambda x: (x.reshape(shape),), lambda x: x.reshape(hf_shape))


def encoder_layer(
    hf: str, path: Path, names: Mapping[tuple[str, ...], str], qkv_bias: bool = True
) -> list[Entry]:
    """One `polyformer.models.encoder.EncoderLayer`: `hf` its HF prefix (ending in "."), `path`
    its state path, `names` our sub-modules -> the family's HF names (`layer_norm*` modules are
    LayerNorms, the others linear layers; without `qkv_bias`, query, key and value have none)."""
    entries = []
    for module, name in names.items():
        if module[0].startswith("layer_norm"):
            entries += layer_norm(hf + name, (*path, *module))
        else:
            has_bias = qkv_bias or module[-1] not in ("query", "key", "value")
            entries += linear(hf + name, (*path, *module), bias=has_bias)
    return entries


@dataclasses.dataclass(frozen=True)
class Table:
    """The complete mapping between a family's HF checkpoints and one model configuration.

    Attributes:
      entries: one per HF parameter tensor, named as the HF model class that `save` targets names
        them (e.g. `transformer.h.0.ln_1.weight` for GPT2LMHeadModel).
      optional_prefix: the HF base-model prefix (`transformer.`) that checkpoints of the bare base
        model omit; names without it are accepted too.
      ignored: tensors that checkpoints may hold but that are no parameters (e.g. GPT-2's cached
        causal masks `attn.bias`), dropped by name on load and never written.
      tied: (name, source) pairs: a checkpoint may repeat tensor `source` under `name` (a tied
        output embedding); accepted when equal to the source, never written.
      aliases: (old, name) pairs: older checkpoints store tensor `name` under `old` (e.g.
        Wav2Vec2's `weight_g` for `parametrizations.weight.original0`); read, never written.
    """

    entries: tuple[Entry, ...]
    optional_prefix: str = ""
    ignored: frozenset[str] = frozenset()
    tied: tuple[tuple[str, str], ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()

    def check_covers(self, paths: set[Path]) -> None:
        """Raises ValueError unless the table fills exactly `paths` (a bug in a table, not in a
        checkpoint)."""
        covered = [path for entry in self.entries for path in entry.ours]
        if len(covered) != len(set(covered)) or set(covered) != paths:
            raise ValueError(
                "conversion table does not match the model's parameters: "
                f"not filled {sorted(map(str, paths - set(covered)))}, "
                f"unknown {sorted(map(str, set(covered) - paths))}"
            )


def _canonical_names(table: Table, names: list[str], unexpected: list[str]) -> dict[str, str]:
    """Checkpoint name -> table name, adding the optional prefix where the checkpoint lacks it and
    renaming aliases; names that match nothing (or that collide after the prefix is added or an
    alias renamed) go to `unexpected`."""
    aliases = dict(table.aliases)
    known = {entry.hf for entry in table.entries} | table.ignored | {n for n, _ in table.tied}
    known |= set(aliases)
    canonical = {}
    for name in names:
        full = name if name in known else table.optional_prefix + name
        full = aliases.get(full, full)
        if full not in known or full in canonical.values():
            unexpected.append(name)
        else:
            canonical[name] = full
    return canonical


def load(
    table: Table,
    tensors: Mapping[str, jax.Array],
    shapes: Mapping[Path, jax.ShapeDtypeStruct],
    source: str,
) -> dict[Path, jax.Array]:
    """HF tensors -> our parameters, cast to the dtypes in `shapes`.

    Args:
      tensors: the checkpoint, HF name -> array.
      shapes: every parameter of the model, state path -> its shape and dtype.
      source: what the checkpoint is (a file name), for the error message.

    Raises CheckpointMismatchError listing every missing, unexpected, wrong-shape and
    non-float tensor.
    """
    table.check_covers(set(shapes))
    missing, unexpected, wrong_shape, wrong_dtype = [], [], [], []
    canonical = _canonical_names(table, list(tensors), unexpected)
    by_name = {full: tensors[name] for name, full in canonical.items()}
    params = {}
    for entry in table.entries:
        if entry.hf not in by_name:
            missing.append(entry.hf)
            continue
        x = by_name[entry.hf]
        expected = jax.eval_shape(entry.to_hf, *(shapes[p] for p in entry.ours)).shape
        if tuple(x.shape) != tuple(expected):
            wrong_shape.append(f"{entry.hf}: checkpoint {tuple(x.shape)}, model {tuple(expected)}")
            continue
        if not jnp.issubdtype(x.dtype, jnp.floating):
            # Every parameter is a float: integer or bool weights mean a damaged or foreign file.
            wrong_dtype.append(f"{entry.hf}: {x.dtype}, expected a floating-point dtype")
            continue
        for path, value in zip(entry.ours, entry.to_ours(jnp.asarray(x)), strict=True):
            params[path] = value.astype(shapes[path].dtype)
    for name, source_name in table.tied:
        if name in by_name and source_name in by_name:
            copy_, original = by_name[name], by_name[source_name]
            if copy_.shape != original.shape or not np.array_equal(copy_, original):
                # A model with its own output weights: the config should not tie them.
                unexpected.append(f"{name} (differs from {source_name}, to which it is tied)")
    if missing or unexpected or wrong_shape or wrong_dtype:
        raise CheckpointMismatchError(source, missing, unexpected, wrong_shape, wrong_dtype)
    return params


def save(table: Table, params: Mapping[Path, jax.Array]) -> dict[str, jax.Array]:
    """Our parameters (state path -> array) -> HF tensors, named as `table.entries` names them."""
    table.check_covers(set(params))
    # jnp.asarray: a numpy parameter (a gathered trained model holds them) would go through
    # `.T` as a strided view, which safetensors.flax writes in its untransposed memory order.
    return {
        entry.hf: entry.to_hf(*(jnp.asarray(params[p]) for p in entry.ours))
        for entry in table.entries
    }


def _in_stack(path: Path, stacks: Mapping[Path, int]) -> tuple[Path, Path] | None:
    """(the LayerStack's path, the path inside its layer) for a stacked parameter's path
    (*stack, "layer", *rest); None for a parameter outside every LayerStack."""
    for stack in stacks:
        if path[: len(stack) + 1] == (*stack, "layer"):
            return stack, path[len(stack) + 1 :]
    return None


def unstack_layers(params: Mapping[Path, Any], stacks: Mapping[Path, int]) -> dict[Path, Any]:
    """Parameters by state path, with every LayerStack's stacked one `[num_layers, ...]` at
    (*stack, "layer", *rest) cut into its layers at (*stack, i, *rest): the paths an unscanned
    model has and the tables name. `stacks`: `layers.layer_stacks(model)`; values are arrays or
    jax.ShapeDtypeStructs."""
    out = {}
    for path, value in params.items():
        where = _in_stack(path, stacks)
        if where is None:
            out[path] = value
            continue
        stack, rest = where
        for i in range(stacks[stack]):
            if isinstance(value, jax.ShapeDtypeStruct):
                out[(*stack, i, *rest)] = jax.ShapeDtypeStruct(value.shape[1:], value.dtype)
            else:
                out[(*stack, i, *rest)] = value[i]
    return out


def stack_layers(
    params: Mapping[Path, jax.Array], stacked: Mapping[Path, Any], stacks: Mapping[Path, int]
) -> dict[Path, jax.Array]:
    """The inverse of unstack_layers: per-layer parameters -> `stacked`'s paths (a model's,
    some inside LayerStacks), a stacked one made of its layers `[num_layers, ...]` when `params`
    has all of them; paths that `params` lacks are left out."""
    out = {}
    for path in stacked:
        where = _in_stack(path, stacks)
        if where is None:
            if path in params:
                out[path] = params[path]
            continue
        stack, rest = where
        layers = [(*stack, i, *rest) for i in range(stacks[stack])]
        if all(layer in params for layer in layers):
            out[path] = jnp.stack([params[layer] for layer in layers])
    return out


def model_params(model: nnx.Module, state: nnx.State | None = None) -> dict[Path, jax.Array]:
    """The model's parameters, or `state` (a State of the same structure, such as their
    gradients), by the state paths the tables name (LayerStacks unstacked)."""
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param) if state is None else state)
    return unstack_layers({key: var.get_value() for key, var in flat}, layer_stacks(model))


def load_into(
    model: nnx.Module, table: Table, tensors: Mapping[str, jax.Array], source: str
) -> nnx.Module:
    """`model` with the parameters `table` names set from the HF `tensors`, each cast to its
    parameter's dtype.

    Args:
      model: the model to fill: abstract (`nnx.eval_shape(lambda: build(config, rngs=...))`, no
        initialisation computed), in which case the table must fill every parameter, or built,
        in which case parameters the table does not name keep their values.
      table: the conversion table.
      tensors: the checkpoint, HF name -> array.
      source: what the checkpoint is (a file name), for error messages.

    Raises CheckpointMismatchError listing every missing, unexpected and wrong-shape tensor.
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if any(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(rest)):
        raise ValueError(f"{type(model).__name__} has state besides parameters; cannot load it")
    flat = dict(nnx.to_flat_state(params))
    stacks = layer_stacks(model)
    per_layer = unstack_layers(
        {key: _abstract(var.get_value()) for key, var in flat.items()}, stacks
    )
    filled = {path for entry in table.entries for path in entry.ours}
    if any(isinstance(var.get_value(), jax.ShapeDtypeStruct) for var in flat.values()):
        table.check_covers(set(per_layer))
    shapes = {key: shape for key, shape in per_layer.items() if key in filled}
    values = stack_layers(load(table, tensors, shapes, source), flat, stacks)
    for key, var in flat.items():
        if key in values:
            var.set_value(values[key])
    return nnx.merge(graphdef, nnx.from_flat_state(flat), rest)


def _abstract(value: jax.Array | jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(value.shape, value.dtype)
