"""What every attention kernel shares: the calling convention, input checks and masked softmax.

Every kernel is a frozen dataclass called as

    out = kernel(q, k, v, mask=None, causal=False, *, bias=None, scale=None, rng=None,
                 segment_ids=None)

with q `[batch, q_length, heads, head_dim]`, k and v `[batch, k_length, kv_heads, head_dim]` and
out `[batch, q_length, heads, head_dim]` in q's dtype. kv_heads divides heads: query head h reads
key/value head h // (heads // kv_heads) (grouped-query attention; kv_heads = 1 is multi-query),
and no kernel repeats k and v in memory to do so. `mask` is boolean, True where attention is
allowed: a key-padding mask `[batch, k_length]` or a full mask `[batch, heads | 1, q_length,
k_length]`. `causal` lets query i see key j only when j <= i + (k_length - q_length): queries are
aligned to the end of the keys, which is what a decoder reading a cache needs. `scale` defaults to
1 / sqrt(head_dim). `rng` is only used by train-mode randomness (attention dropout, feature
redraw); without it a kernel is deterministic. `segment_ids` packs several sequences in one
row: `[batch, length]` ints (q_length == k_length) or a pair (`[batch, q_length]`,
`[batch, k_length]`); a query sees only keys with its own segment id.

A query that may see no key at all (a fully padded row, an empty pattern row) gets output 0 and a
finite gradient, never NaN.

`kernel.probabilities(q, k, mask, causal, *, bias, scale, segment_ids)` returns the attention
probabilities `[batch, heads, q_length, k_length]` (float32) that a call with the same arguments
applies to v, without dropout: the rows of a query that sees no key are all zero.
"""

from __future__ import annotations

import abc
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from polyformer.attention import layout

SegmentIds = jax.Array | tuple[jax.Array, jax.Array]
"""`[batch, length]` int (queries and keys alike) or (`[batch, q_length]`, `[batch, k_length]`)."""

IMPLEMENTATIONS = ("auto", "xla", "pallas_tpu", "pallas_gpu")
"""Every kernel's `implementation`: "auto" picks by the platform the program is compiled for
(see `per_platform`); "pallas_tpu" and "pallas_gpu" run their Pallas kernels in interpret mode when
lowered for a CPU, which is how they are tested without the hardware."""


def check_implementation(implementation: str, allowed: tuple[str, ...] = IMPLEMENTATIONS) -> None:
    if implementation not in allowed:
        raise ValueError(f"implementation must be one of {allowed}, got {implementation!r}")


def per_platform(*args, cpu, tpu, cuda):
    """`cpu(*args)`, `tpu(*args)` or `cuda(*args)` for the platform the program is compiled for;
    any other platform takes `cpu`. Under a layout (the trainer's steps, `polyformer compile`) the
    program is compiled for the layout mesh's devices, so only their branch is traced (a GPU mesh
    keeps `cuda` and `cpu`: its devices do not say CUDA or ROCm). Otherwise the branch is chosen
    when the program is lowered, so that one jitted function holds the right code for whichever
    platform it is compiled for; every branch is then traced and differentiated, Pallas kernels
    included, which is about half of tracing a tiny model's train step."""
    platform = layout.platform()
    if platform == "cpu":
        return cpu(*args)
    if platform == "tpu":
        return tpu(*args)
    branches = dict(cuda=cuda) if platform == "gpu" else dict(tpu=tpu, cuda=cuda)
    return jax.lax.platform_dependent(*args, cpu=cpu, **branches, default=cpu)


def interpreted(fn):
    """fn(*args, interpret=...) with interpret=True only when compiled for a CPU: a Pallas kernel
    compiled for its own hardware stays a real kernel. Like `per_platform`, a layout's devices
    decide while tracing; the lowering decides otherwise."""

    def call(*args):
        platform = layout.platform()
        if platform is not None:
            return fn(*args, interpret=platform == "cpu")
        return jax.lax.platform_dependent(
            *args,
            cpu=lambda *a: fn(*a, interpret=True),
            default=lambda *a: fn(*a, interpret=False),
        )

    return call


def pallas_unsupported(mask, bias, rng, dropout_rate: float) -> str | None:
    """Why a Pallas kernel cannot run a call with these arguments, or None."""
    if bias is not None:
        return "takes no additive bias; use implementation='xla'"
    if mask is not None and mask.ndim == 4:
        return (
            "takes a key-padding mask `[batch, k_length]` only, not a full 4-D mask; use "
            "implementation='xla', or segment_ids"
        )
    if rng is not None and dropout_rate > 0.0:
        return "has no attention dropout; use implementation='xla'"
    return None


def dispatch(implementation: str, unsupported: str | None, args: tuple, *, xla, tpu, gpu):
    """Runs a kernel's `implementation`: xla(), or tpu(*args, interpret=...) / gpu(*args,
    interpret=...) on args = (q, k, v, mask, segments).

    `unsupported` says why the Pallas kernels cannot run this call (`pallas_unsupported`), or is
    None: asked for by name, they raise ValueError; under "auto", every platform takes xla(). Under
    a layout over several devices (the trainer's steps) the Pallas kernels run per shard
    (layout.per_shard). Under a mesh of several devices without a layout, GSPMD would have to
    split the Pallas call, which it cannot: "auto" takes xla() there.
    """
    pallas = {"pallas_tpu": tpu, "pallas_gpu": gpu}.get(implementation)
    if pallas is not None:
        if unsupported:
            raise ValueError(f"implementation={implementation!r} {unsupported}")
        return layout.per_shard(interpreted(pallas), *args)
    gspmd_only = layout.current() is None and jax.sharding.get_abstract_mesh().size > 1
    if implementation == "xla" or unsupported or gspmd_only:
        return xla()

    def compiled(kernel):
        return lambda: layout.per_shard(lambda *a: kernel(*a, interpret=False), *args)

    return per_platform(cpu=xla, tpu=compiled(tpu), cuda=compiled(gpu))


def check_inputs(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    segment_ids: SegmentIds | None = None,
) -> tuple[int, int, int, int, int]:
    """Validates shapes and dtypes; returns (batch, q_length, k_length, heads, head_dim).

    Raises ValueError naming the shapes received and the shapes expected.
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(
                f"{name} must be [batch, length, heads, head_dim], got shape {tuple(x.shape)}"
            )
    batch, q_len, heads, head_dim = q.shape
    k_len, kv_heads = k.shape[1], k.shape[2]
    if k.shape != (batch, k_len, kv_heads, head_dim) or heads % kv_heads:
        raise ValueError(
            f"k has shape {tuple(k.shape)}, expected (batch={batch}, k_length, kv_heads dividing "
            f"heads={heads}, head_dim={head_dim}) to match q of shape {tuple(q.shape)}"
        )
    if v.shape[:3] != (batch, k_len, kv_heads):
        raise ValueError(
            f"v has shape {tuple(v.shape)}, expected ({batch}, {k_len}, {kv_heads}, value_dim) "
            f"to match k of shape {tuple(k.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not jnp.issubdtype(q.dtype, jnp.floating):
        raise ValueError(f"q, k, v must be floating point, got {q.dtype}")
    if mask is not None:
        if mask.dtype != jnp.bool_:
            raise ValueError(f"mask must be boolean (True = attend), got dtype {mask.dtype}")
        padding = (batch, k_len)
        full = mask.ndim == 4 and (
            mask.shape[0] == batch
            and mask.shape[1] in (1, heads)
            and mask.shape[2:] == (q_len, k_len)
        )
        if tuple(mask.shape) != padding and not full:
            raise ValueError(
                f"mask has shape {tuple(mask.shape)}, expected a key-padding mask {padding} or a "
                f"full mask ({batch}, {heads} or 1, {q_len}, {k_len})"
            )
    if bias is not None:
        ok = bias.ndim == 4 and all(
            b in (1, n) for b, n in zip(bias.shape, (batch, heads, q_len, k_len), strict=True)
        )
        if not ok:
            raise ValueError(
                f"bias has shape {tuple(bias.shape)}, expected one that broadcasts to "
                f"({batch}, {heads}, {q_len}, {k_len})"
            )
    split_segments(segment_ids, batch, q_len, k_len)
    return batch, q_len, k_len, heads, head_dim


def check_decode_inputs(
    q, k, v, mask, cache_heads: int, cache_head_dim: int, *, segment_ids=None
) -> None:
    check_inputs(q, k, v, segment_ids=segment_ids)
    if q.shape[1] != k.shape[1]:
        raise ValueError(
            "decoding takes as many new keys as queries, got q "
            f"{tuple(q.shape)}, k {tuple(k.shape)}"
        )
    if k.shape[2:] != (cache_heads, cache_head_dim):
        raise ValueError(
            f"k has shape {tuple(k.shape)}, expected (batch, n, {cache_heads}, {cache_head_dim}) "
            "as the cache was made"
        )
    if mask is not None and (mask.dtype != jnp.bool_ or mask.shape != k.shape[:2]):
        raise ValueError(
            f"decoding mask must be boolean {tuple(k.shape[:2])} (validity of the new keys), "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )


def split_segments(
    segment_ids: SegmentIds | None, batch: int, q_len: int, k_len: int
) -> tuple[jax.Array, jax.Array] | None:
    """`segment_ids` as (query ids `[batch, q_length]`, key ids `[batch, k_length]`), or None.

    Raises ValueError when the ids are not integer arrays of those shapes.
    """
    if segment_ids is None:
        return None
    pair = segment_ids if isinstance(segment_ids, tuple | list) else (segment_ids, segment_ids)
    if len(pair) != 2:
        raise ValueError(f"segment_ids must be one array or a pair, got {len(pair)} items")
    for name, ids, length in (("query", pair[0], q_len), ("key", pair[1], k_len)):
        if tuple(jnp.shape(ids)) != (batch, length) or not jnp.issubdtype(
            jnp.result_type(ids), jnp.integer
        ):
            raise ValueError(
                f"{name} segment ids must be integers of shape ({batch}, {length}), got "
                f"{jnp.result_type(ids)} {tuple(jnp.shape(ids))} (pass a pair (q_ids, k_ids) "
                "when q_length != k_length)"
            )
    return jnp.asarray(pair[0]), jnp.asarray(pair[1])


def segment_mask(segments: tuple[jax.Array, jax.Array] | None) -> jax.Array | None:
    """bool `[batch, 1, q_length, k_length]`: True where query and key share a segment."""
    if segments is None:
        return None
    q_ids, k_ids = segments
    return (q_ids[:, :, None] == k_ids[:, None, :])[:, None]


def and_masks(*masks: jax.Array | None) -> jax.Array | None:
    """The conjunction of broadcastable masks, skipping None (None when all are None)."""
    present = [m for m in masks if m is not None]
    if not present:
        return None
    out = present[0]
    for m in present[1:]:
        out = out & m
    return out


def default_scale(head_dim: int, scale: float | None) -> float:
    return 1.0 / math.sqrt(head_dim) if scale is None else scale


class Kernel(abc.ABC):
    """The calling convention of the kernels here, in one place: `__call__` checks the inputs,
    fills in the default scale and splits `segment_ids`, then runs the kernel's `_attend` with
    the scale as a number and `segments` as (query ids, key ids) or None (`segment_ids` stays as
    passed, for a kernel that cares whether it was one array or a pair)."""

    def __call__(
        self,
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        mask: jax.Array | None = None,
        causal: bool = False,
        *,
        bias: jax.Array | None = None,
        scale: float | None = None,
        rng: jax.Array | None = None,
        segment_ids: SegmentIds | None = None,
    ) -> jax.Array:
        """q `[batch, q_length, heads, head_dim]`, k/v `[batch, k_length, kv_heads, dim]`, the
        rest as in the module docstring; returns `[batch, q_length, heads, dim]` in q's dtype."""
        batch, q_len, k_len, _, head_dim = check_inputs(q, k, v, mask, bias, segment_ids)
        segments = split_segments(segment_ids, batch, q_len, k_len)
        scale = default_scale(head_dim, scale)
        return self._attend(q, k, v, mask, causal, bias, scale, rng, segment_ids, segments)

    def probabilities(
        self,
        q: jax.Array,
        k: jax.Array,
        mask: jax.Array | None = None,
        causal: bool = False,
        *,
        bias: jax.Array | None = None,
        scale: float | None = None,
        segment_ids: SegmentIds | None = None,
    ) -> jax.Array:
        """The probabilities `[batch, heads, q_length, k_length]` (float32) with which a call on
        these arguments (and any v) weighs the values, without dropout; all zero in the row of a
        query that sees no key. q, k and the rest as `__call__`'s."""
        batch, q_len, k_len, _, head_dim = check_inputs(q, k, k, mask, bias, segment_ids)
        segments = split_segments(segment_ids, batch, q_len, k_len)
        scale = default_scale(head_dim, scale)
        return self._probabilities(q, k, mask, causal, bias, scale, segments)

    def decode(
        self,
        cache: Any,
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        mask: jax.Array | None = None,
        *,
        scale: float | None = None,
        segment_ids: jax.Array | None = None,
    ) -> tuple[jax.Array, Any]:
        """Attends n new tokens (q `[batch, n, heads, head_dim]`, k, v `[batch, n, kv_heads,
        head_dim]`, `mask` `[batch, n]` True for real tokens, `segment_ids` `[batch, n]`)
        causally to everything decoded so far in their segment; returns (out `[batch, n, heads,
        head_dim]`, new cache). `cache` is the kernel's `init_cache` or an earlier decode's."""
        check_decode_inputs(q, k, v, mask, *self._cache_heads(cache), segment_ids=segment_ids)
        return self._decode(cache, q, k, v, mask, default_scale(q.shape[-1], scale), segment_ids)

    def _cache_heads(self, cache) -> tuple[int, int]:
        """(kv_heads, head_dim) of the cache: its `key` is `[batch, slots, kv_heads, head_dim]`."""
        return cache.key.shape[2:]

    @abc.abstractmethod
    def _decode(self, cache, q, k, v, mask, scale, segment_ids) -> tuple[jax.Array, Any]:
        """The kernel's decoding step, on checked inputs."""

    @abc.abstractmethod
    def _probabilities(self, q, k, mask, causal, bias, scale, segments) -> jax.Array:
        """`probabilities` on checked inputs."""

    @abc.abstractmethod
    def _attend(self, q, k, v, mask, causal, bias, scale, rng, segment_ids, segments) -> jax.Array:
        """The kernel itself, on checked inputs."""


AttentionKernel = Kernel
"""The one signature every kernel follows (see the module docstring): `Kernel`'s `__call__` and
`probabilities`. A kernel of one's own subclasses `Kernel`, which checks the inputs once, or is
any callable with the same signature."""


def causal_allowed(q_positions: np.ndarray | jax.Array, k_positions, q_len: int, k_len: int):
    """Causal rule with queries aligned to the end of the keys (decoding against a cache)."""
    return k_positions <= q_positions + (k_len - q_len)


def causal_block_mask(q_len: int, k_len: int, block: int) -> np.ndarray:
    """bool [n_q_blocks, n_k_blocks]: blocks holding a pair the causal rule allows."""
    last_query = np.minimum(np.arange(0, q_len, block) + block, q_len) - 1
    first_key = np.arange(0, k_len, block)
    return causal_allowed(last_query[:, None], first_key[None, :], q_len, k_len)


def allowed_pairs(
    mask: jax.Array | None,
    causal: bool,
    segments: tuple[jax.Array, jax.Array] | None,
    q_len: int,
    k_len: int,
) -> jax.Array | None:
    """The caller's mask, the causal rule and the segments as one boolean mask broadcastable to
    `[batch, heads, q_length, k_length]`, or None when everything is allowed."""
    allowed = expand_mask(mask, q_len)
    if causal:
        # Built from iotas in the program, not as a numpy constant: an [L, L] constant lands in
        # every lowering of a program that holds this path, even one compiled for a platform
        # that runs another kernel (4 GiB of host memory at 64K tokens).
        rule = causal_allowed(
            jax.lax.broadcasted_iota(jnp.int32, (q_len, k_len), 0),
            jax.lax.broadcasted_iota(jnp.int32, (q_len, k_len), 1),
            q_len,
            k_len,
        )
        allowed = jnp.asarray(rule) if allowed is None else allowed & rule
    return and_masks(allowed, segment_mask(segments))


def grouped_scores(q: jax.Array, k: jax.Array, scale: float) -> jax.Array:
    """float32 q.k * scale `[batch, heads, q_length, k_length]` for q `[batch, q_length, heads,
    head_dim]` and k `[batch, k_length, kv_heads, head_dim]`; query head h reads key head
    h // (heads // kv_heads), without repeating k."""
    batch, q_len, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    qg = q.reshape(batch, q_len, kv_heads, heads // kv_heads, head_dim)
    scores = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k, preferred_element_type=jnp.float32)
    return scores.reshape(batch, heads, q_len, -1) * scale


def softmax_probabilities(
    q: jax.Array,
    k: jax.Array,
    allowed: jax.Array | None,
    bias: jax.Array | None,
    scale: float,
) -> jax.Array:
    """Exact softmax(q k^T * scale + bias) over the `allowed` keys, float32 `[batch, heads,
    q_length, k_length]`; rows with no allowed key are zero. Shapes as `grouped_scores`."""
    scores = grouped_scores(q, k, scale)
    if bias is not None:
        scores = scores + bias.astype(jnp.float32)
    return masked_softmax(scores, allowed)


def expand_mask(mask: jax.Array | None, q_len: int) -> jax.Array | None:
    """Any accepted mask as `[batch, heads | 1, q_length | 1, k_length]` (broadcastable)."""
    if mask is None or mask.ndim == 4:
        return mask
    return mask[:, None, None, :]


def masked_softmax(scores: jax.Array, allowed: jax.Array | None, axis: int = -1) -> jax.Array:
    """Softmax over `axis` in float32 where only `allowed` entries count.

    Rows with no allowed entry come out as all zeros, and the gradient stays finite, because masked
    logits are replaced (not offset) before the max and the denominator is floored.
    """
    scores = scores.astype(jnp.float32)
    if allowed is None:
        return jax.nn.softmax(scores, axis=axis)
    scores = jnp.where(allowed, scores, -jnp.inf)
    row_max = jnp.max(scores, axis=axis, keepdims=True)
    row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
    weights = jnp.where(allowed, jnp.exp(scores - row_max), 0.0)
    total = jnp.sum(weights, axis=axis, keepdims=True)
    return weights / jnp.maximum(total, jnp.finfo(jnp.float32).tiny)


def dropout(weights: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """Inverted dropout on attention weights; identity without an rng or with rate 0."""
    if rng is None or rate == 0.0:
        return weights
    keep = jax.random.bernoulli(rng, 1.0 - rate, weights.shape)
    return jnp.where(keep, weights / (1.0 - rate), 0.0)
