"""What every attention kernel shares: the calling convention, input checks and masked softmax.

Every kernel is a frozen dataclass called as

    out = kernel(q, k, v, mask=None, causal=False, *, bias=None, scale=None, rng=None)

with q `[batch, q_length, heads, head_dim]`, k and v `[batch, k_length, heads, head_dim]` and out
`[batch, q_length, heads, head_dim]` in q's dtype. `mask` is boolean, True where attention is
allowed: a key-padding mask `[batch, k_length]` or a full mask `[batch, heads | 1, q_length,
k_length]`. `causal` lets query i see key j only when j <= i + (k_length - q_length): queries are
aligned to the end of the keys, which is what a decoder reading a cache needs. `scale` defaults to
1 / sqrt(head_dim). `rng` is only used by train-mode randomness (attention dropout, feature
redraw); without it a kernel is deterministic.

A query that may see no key at all (a fully padded row, an empty pattern row) gets output 0 and a
finite gradient, never NaN.
"""

from __future__ import annotations

import math
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np


class AttentionKernel(Protocol):
    """The one signature every kernel follows (see the module docstring)."""

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
    ) -> jax.Array: ...


def check_inputs(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
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
    k_len = k.shape[1]
    if k.shape != (batch, k_len, heads, head_dim):
        raise ValueError(
            f"k has shape {tuple(k.shape)}, expected (batch={batch}, k_length, heads={heads}, "
            f"head_dim={head_dim}) to match q of shape {tuple(q.shape)}"
        )
    if v.shape[:3] != (batch, k_len, heads):
        raise ValueError(
            f"v has shape {tuple(v.shape)}, expected ({batch}, {k_len}, {heads}, value_dim) "
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
    return batch, q_len, k_len, heads, head_dim


def default_scale(head_dim: int, scale: float | None) -> float:
    return 1.0 / math.sqrt(head_dim) if scale is None else scale


def causal_allowed(q_positions: np.ndarray | jax.Array, k_positions, q_len: int, k_len: int):
    """Causal rule with queries aligned to the end of the keys (decoding against a cache)."""
    return k_positions <= q_positions + (k_len - q_len)


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
