"""Where activations live on a device mesh while a step traces: the layout the trainer sets
(training.sharding.constrained), which the models pin their activations to (`constrain`) and the
attention kernels run their Pallas kernels under (`per_shard`).

Logical axis names ("batch", "length", "embed", "heads", ...) are those the parameters carry; the
layout's `spec` maps them to mesh axes by the run's rules.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from contextvars import ContextVar

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

LogicalAxes = tuple[str | None, ...]


@dataclasses.dataclass(frozen=True)
class Layout:
    """A mesh and `spec(axes, shape)`: the PartitionSpec of an activation of `shape` whose
    dimensions have the logical names `axes`."""

    mesh: Mesh
    spec: Callable[[LogicalAxes, tuple[int, ...]], PartitionSpec]


_LAYOUT: ContextVar[Layout | None] = ContextVar("layout", default=None)


@contextlib.contextmanager
def laid_out(layout: Layout) -> Iterator[None]:
    """Within the block, activations follow `layout`, and the program traces under its mesh."""
    token = _LAYOUT.set(layout)
    try:
        with jax.sharding.use_abstract_mesh(layout.mesh.abstract_mesh):
            yield
    finally:
        _LAYOUT.reset(token)


def current() -> Layout | None:
    """The layout set by the innermost `laid_out`, or None."""
    return _LAYOUT.get()


def platform() -> str | None:
    """The platform of the innermost layout's devices ("cpu", "tpu", "gpu", ...), or None outside
    `laid_out`."""
    layout = current()
    return None if layout is None else layout.mesh.devices.flat[0].platform


def mesh_axes(entry: str | tuple[str, ...] | None) -> tuple[str, ...]:
    """The mesh axes one entry of a PartitionSpec names (none, one, or several)."""
    return (entry,) if isinstance(entry, str) else tuple(entry or ())


def local_shape(axes: LogicalAxes, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The part of an activation of `shape` (logical axes `axes`) that one device holds under
    the layout; `shape` itself outside `laid_out`."""
    layout = current()
    if layout is None:
        return tuple(shape)
    local = []
    for size, entry in zip(shape, layout.spec(axes, shape), strict=False):
        local.append(size // math.prod(layout.mesh.shape[n] for n in mesh_axes(entry)))
    return (*local, *shape[len(local) :])


def constrain(x: jax.Array, axes: LogicalAxes) -> jax.Array:
    """x laid out by its logical axes (one name or None per dimension), so that GSPMD does not
    guess the layout of the activations between layers; x itself outside `laid_out`."""
    layout = current()
    if layout is None:
        return x
    return jax.lax.with_sharding_constraint(
        x, NamedSharding(layout.mesh, layout.spec(axes, x.shape))
    )


_HEADS_MAJOR = ("batch", None, "heads", None)  # q, k, v, out: [batch, length, heads, head_dim]


def per_shard(fn: Callable[..., jax.Array], q, k, v, mask, segments) -> jax.Array:
    """`fn(q, k, v, mask, segments)` (arguments as `attention.base.Kernel._attend` gets them)
    run by every device on its own rows of the batch and its own heads (shard_map), under a
    layout over several devices; a plain call otherwise.

    GSPMD cannot split a Pallas call over devices ("Mosaic kernels cannot be automatically
    partitioned"): run whole, it would gather every shard onto each device. Attention is
    independent per example and per head, so each device runs the kernel on its shard. Heads are
    split only where the rules split both the query and the key/value heads alike (query head h
    reads key head h // group, so both must be split into the same number of contiguous parts).
    """
    layout = current()
    if layout is None or layout.mesh.size == 1:
        return fn(q, k, v, mask, segments)
    q_spec = layout.spec(_HEADS_MAJOR, q.shape)
    kv_spec = layout.spec(_HEADS_MAJOR, k.shape)
    if q_spec[2] != kv_spec[2]:
        q_spec, kv_spec = (PartitionSpec(*s[:2], None, *s[3:]) for s in (q_spec, kv_spec))
    rows = PartitionSpec(q_spec[0], None)  # mask `[batch, k_length]`, segment ids
    in_specs = (
        q_spec,
        kv_spec,
        kv_spec,
        None if mask is None else rows,
        None if segments is None else (rows, rows),
    )
    run = jax.shard_map(fn, mesh=layout.mesh, in_specs=in_specs, out_specs=q_spec, check_vma=False)
    return run(q, k, v, mask, segments)
