"""Device meshes and the logical-axis rules that place parameters and batches on them.

Parameters name their axes when they are created (`polyformer.attention.layer.logical`):
"vocab", "embed", "heads", "mlp", ... A rules table maps each logical name to mesh axes. The same
run config runs on one device (every mesh axis of size 1) or on a pod slice.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from polyformer.attention import layout
from polyformer.training.step import TrainState

MESH_AXES = ("data", "fsdp", "tensor")

# Batches split over data and fsdp; parameters are sharded over fsdp along "embed" (ZeRO-3 style)
# and over tensor along the widths that Megatron splits (heads, mlp, vocab).
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the mesh axes; -1 (at most one) takes all remaining devices."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    rules: tuple[tuple[str, str | tuple[str, ...] | None], ...] = DEFAULT_RULES

    def shape(self, num_devices: int) -> tuple[int, int, int]:
        sizes = [self.data, self.fsdp, self.tensor]
        if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
            raise ValueError(f"mesh sizes must be positive with at most one -1, got {sizes}")
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise ValueError(f"{num_devices} devices do not split into mesh {sizes}")
            sizes[sizes.index(-1)] = num_devices // known
        if math.prod(sizes) != num_devices:
            raise ValueError(
                f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} needs "
                f"{math.prod(sizes)} devices, {num_devices} are available"
            )
        return tuple(sizes)


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = jax.devices() if devices is None else list(devices)
    shape = config.shape(len(devices))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def to_mesh_spec(
    logical: PartitionSpec | None, shape: tuple[int, ...], mesh: Mesh, rules
) -> PartitionSpec:
    """Logical axis names -> mesh axes. A dimension that the mesh axes do not divide evenly is
    replicated instead (GPT-2's vocabulary of 50257 over 2 tensor shards, say)."""
    table = dict(rules)
    spec = []
    for name, size in zip(tuple(logical or ()), shape, strict=False):
        axes = table.get(name) if name is not None else None
        width = math.prod(mesh.shape[a] for a in layout.mesh_axes(axes))
        spec.append(axes if axes is not None and size % width == 0 else None)
    return PartitionSpec(*spec)


def param_shardings(abstract_params: nnx.State, mesh: Mesh, rules) -> nnx.State:
    """A NamedSharding for every variable of an (abstract) nnx state, from its logical axes."""
    logical = nnx.get_partition_spec(abstract_params)
    return jax.tree.map(
        lambda spec, leaf: NamedSharding(mesh, to_mesh_spec(spec, leaf.shape, mesh, rules)),
        logical,
        abstract_params,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def state_shardings(
    abstract_state: TrainState,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    rules,
    trainable: nnx.filterlib.Filter = nnx.Param,
) -> TrainState:
    """Shardings for a whole (abstract) TrainState: parameters (trained or frozen) from their
    logical axes, each optimizer moment as the `trainable` parameter it belongs to
    (`optax.tree_map_params` finds them exactly), counters and keys replicated."""
    params = param_shardings(abstract_state.params, mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_state = optax.tree_map_params(
        optimizer,
        lambda _, sharding: sharding,
        abstract_state.opt_state,
        nnx.filter_state(params, trainable),
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct),
    )
    return TrainState(replicated, params, opt_state, replicated)


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
    """Batch arrays `[batch, ...]` of any rank: the leading axis over the mesh axes of the
    "batch" rule, the others replicated."""
    return NamedSharding(mesh, PartitionSpec(dict(rules).get("batch")))


def activation_spec(
    axes: tuple[str | None, ...], shape: tuple[int, ...], mesh: Mesh, rules
) -> PartitionSpec:
    """The mesh layout of an activation of `shape` whose dimensions have the logical names `axes`:
    `to_mesh_spec`, with each mesh axis splitting one dimension only. (The rules shard both
    "batch" and "embed" over fsdp, ZeRO-3 style for parameters; an activation keeps it on its
    batch dimension.)"""
    used: set[str] = set()
    spec = []
    for entry in to_mesh_spec(PartitionSpec(*axes), shape, mesh, rules):
        names = set(layout.mesh_axes(entry))
        spec.append(None if used & names else entry)
        used |= names
    return PartitionSpec(*spec)


def constrained(step: Callable, mesh: Mesh, rules) -> Callable:
    """`step` traced under the layout of `mesh` and `rules` (attention.layout): the models pin
    their activations by their logical axes, as parameters are, so GSPMD propagates no guessed
    layout through the layers, and the attention kernels run their Pallas kernels per shard."""
    spec = functools.partial(activation_spec, mesh=mesh, rules=rules)

    @functools.wraps(step)
    def run(*args, **kwargs):
        with layout.laid_out(layout.Layout(mesh, spec)):
            return step(*args, **kwargs)

    return run
