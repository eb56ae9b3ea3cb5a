"""Exact softmax attention: softmax(q k^T * scale + bias) v."""

from __future__ import annotations

import dataclasses
from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from polyformer.attention import base

# Score bytes (float32, all batch entries and heads) above which the query rows are processed in
# chunks, and the size each chunk aims for. See benchmarks/RESULTS.md ("Dense attention on CPU"):
# XLA materialises the whole [batch, heads, q, k] score matrix as a fresh buffer on every call,
# and on CPU first-touch page faults plus a transposed copy of the probabilities cost more than
# the matmuls. Chunks of a few MiB stay in cache and reuse one buffer; the backward pass gains
# most from small chunks (at L=4096, 4 heads: 64-row chunks took half the time of 128-row ones).
# Measured on a 2-core AMD EPYC (Zen 4: 1 MiB L2 per core, 32 MiB L3).
_CHUNK_ABOVE_BYTES = 4 * 2**20
_CHUNK_BYTES = 4 * 2**20
# Fewer query rows per chunk than this make matmuls too thin to run at full speed.
_MIN_CHUNK_ROWS = 64
# Stands for -inf in masked scores (as in jax.nn.dot_product_attention): finite, so that
# subtracting the row maximum never gives inf - inf, and exp of it minus any real score is 0.
_MASKED_SCORE = -0.7 * float(np.finfo(np.float32).max)


def dense_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    allowed: jax.Array | None,
    *,
    bias: jax.Array | None,
    scale: float,
    dropout_rate: float = 0.0,
    rng: jax.Array | None = None,
) -> jax.Array:
    """The reference computation with float32 statistics.

    q `[batch, q_length, heads, head_dim]`, k/v `[batch, k_length, heads, dim]`; `allowed`
    broadcasts to `[batch, heads, q_length, k_length]`, and so does `bias`. Returns
    `[batch, q_length, heads, dim]`.

    Every query row is softmax(q k^T * scale + bias) v over its own row, so rows can be computed
    in any grouping with the same result. Large problems go through query chunks (a `lax.map`
    with `jax.checkpoint` per chunk): only one chunk's scores exist at a time, forward and
    backward, so memory is O(chunk x k_length) instead of O(q_length x k_length).
    """
    batch, q_len, heads, _ = q.shape
    k_len = k.shape[1]
    # Heads-major layouts once, so both matmuls are plain batched GEMMs and the probabilities
    # are never transposed (the [b, q, h, d] output layout made XLA copy them transposed).
    qh, kh, vh = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
    allowed = _as_4d(allowed)
    bias = _as_4d(bias)
    chunks = _chunking(batch, heads, q_len, k_len)
    if chunks is None:
        out = _attend(qh, kh, vh, allowed, bias, scale, dropout_rate, rng)
    else:
        out = _attend_in_chunks(qh, kh, vh, allowed, bias, scale, dropout_rate, rng, chunks)
    return jnp.swapaxes(out, 1, 2).astype(q.dtype)


@dataclasses.dataclass(frozen=True)
class _Chunks:
    """One chunk: `batch` batch entries x `heads` heads x `rows` query rows, against all keys."""

    batch: int
    heads: int
    rows: int


def _chunking(batch: int, heads: int, q_len: int, k_len: int) -> _Chunks | None:
    """How to split `[batch, heads, q_len, k_len]` float32 scores into chunks of about
    _CHUNK_BYTES, or None when the whole matrix is small enough to compute at once.

    Rows are split only when one head's `[q_len, k_len]` is bigger than a chunk; otherwise a
    chunk takes whole heads, then whole batch entries (divisors, so that every chunk is alike).
    """
    if batch * heads * q_len * k_len * 4 <= _CHUNK_ABOVE_BYTES:
        return None
    row_bytes = k_len * 4
    rows = _CHUNK_BYTES // row_bytes
    if rows < q_len:
        rows = max(_MIN_CHUNK_ROWS, rows // _MIN_CHUNK_ROWS * _MIN_CHUNK_ROWS)
        return _Chunks(1, 1, min(rows, q_len))
    head_bytes = q_len * row_bytes
    per_chunk = _largest_divisor(heads, _CHUNK_BYTES // head_bytes)
    if per_chunk < heads:
        return _Chunks(1, per_chunk, q_len)
    return _Chunks(_largest_divisor(batch, _CHUNK_BYTES // (heads * head_bytes)), heads, q_len)


def _largest_divisor(n: int, limit: int) -> int:
    return max(d for d in range(1, n + 1) if n % d == 0 and d <= max(limit, 1))


def _as_4d(x: jax.Array | None) -> jax.Array | None:
    """A mask or bias that broadcasts to `[batch, heads, q, k]`, with all four axes present."""
    return x if x is None or x.ndim == 4 else x.reshape((1,) * (4 - x.ndim) + x.shape)


def _attend(qh, kh, vh, allowed, bias, scale, dropout_rate, rng) -> jax.Array:
    """softmax(q k^T * scale + bias) v in heads-major layout: qh `[batch, heads, q, d]`, kh/vh
    `[batch, heads, k, d]`; returns float32 `[batch, heads, q, dim]`."""
    scores = jnp.einsum("bhqd,bhkd->bhqk", qh, kh, preferred_element_type=jnp.float32) * scale
    if bias is not None:
        scores = scores + bias.astype(jnp.float32)
    weights = _softmax(scores, allowed, bias is None)
    weights = base.dropout(weights, dropout_rate, rng)
    return jnp.einsum(
        "bhqk,bhkd->bhqd", weights.astype(vh.dtype), vh, preferred_element_type=jnp.float32
    )


def _softmax(scores: jax.Array, allowed: jax.Array | None, finite: bool) -> jax.Array:
    """base.masked_softmax's result (float32; a row with no allowed key gives zeros and a zero
    gradient), computed the cheaper way when every score is known `finite` (no bias).

    Masked scores become a large finite negative instead of -inf: in a row with any allowed key
    their exp underflows to exactly 0, as with -inf; a row with none comes out uniform and is
    zeroed. This needs no isfinite guard and no floor on the denominator, and its backward pass
    was about 1.4x faster than masked_softmax's (causal, L=512, 12 heads). A bias may hold -inf,
    so with a bias the -inf path is kept.
    """
    if allowed is None or not finite:
        return base.masked_softmax(scores, allowed)
    masked = jnp.where(allowed, scores, _MASKED_SCORE)
    # From the scores, not jnp.any(allowed): XLA would constant-fold that over a constant (causal)
    # mask at compile time, slowly. A row keeps a real score above _MASKED_SCORE iff it has a key.
    row_has_key = jnp.max(masked, axis=-1, keepdims=True) > _MASKED_SCORE
    return jnp.where(row_has_key, jax.nn.softmax(masked, axis=-1), 0.0)


def _attend_in_chunks(qh, kh, vh, allowed, bias, scale, dropout_rate, rng, c: _Chunks):
    """`_attend` over chunks of `c.batch` batch entries x `c.heads` heads x `c.rows` query rows
    (a last, shorter chunk of rows takes the remainder), one `lax.map` step each."""
    batch, heads, q_len, _ = qh.shape
    n_batch, n_heads, n_rows = batch // c.batch, heads // c.heads, q_len // c.rows
    tail = q_len - n_rows * c.rows

    def chunk(index, b, h, start, size):
        def block(x, rows: bool, broadcasts: bool = False):
            """The chunk's part of `[batch, heads, q or k, dim]` x (of its query rows if `rows`);
            for a mask or bias (`broadcasts`), an axis of size 1 is kept whole."""
            spans = [
                (b * c.batch, c.batch),
                (h * c.heads, c.heads),
                (start, size) if rows else (0, x.shape[2]),
                (0, x.shape[3]),
            ]
            if broadcasts:
                spans = [(0, 1) if n == 1 else span for n, span in zip(x.shape, spans, strict=True)]
            starts, sizes = zip(*spans, strict=True)
            return jax.lax.dynamic_slice(x, starts, sizes)

        q, k, v = block(qh, rows=True), block(kh, rows=False), block(vh, rows=False)
        mask = None if allowed is None else block(allowed, rows=True, broadcasts=True)
        add = None if bias is None else block(bias, rows=True, broadcasts=True)
        key = None if rng is None else jax.random.fold_in(rng, index)
        return _attend(q, k, v, mask, add, scale, dropout_rate, key)

    def merge(out, rows_per_chunk, row_blocks):  # [chunks, b, h, rows, dim] -> [b, h, q, dim]
        out = out.reshape(n_batch, n_heads, row_blocks, c.batch, c.heads, rows_per_chunk, -1)
        out = out.transpose(0, 3, 1, 4, 2, 5, 6)
        return out.reshape(batch, heads, row_blocks * rows_per_chunk, -1)

    def main(i):
        b, h, r = i // (n_heads * n_rows), i // n_rows % n_heads, i % n_rows
        return chunk(i, b, h, r * c.rows, c.rows)

    def last(j):
        return chunk(n_batch * n_heads * n_rows + j, j // n_heads, j % n_heads, q_len - tail, tail)

    # Without the checkpoint, the backward pass would keep every chunk's probabilities: the
    # full matrix again. With it, each chunk's scores are recomputed from q, k, v.
    out = jax.lax.map(jax.checkpoint(main), jnp.arange(n_batch * n_heads * n_rows))
    out = merge(out, c.rows, n_rows)
    if tail:
        rest = merge(jax.lax.map(jax.checkpoint(last), jnp.arange(n_batch * n_heads)), tail, 1)
        out = jnp.concatenate([out, rest], axis=2)
    return out


def combine_masks(mask: jax.Array | None, causal: bool, q_len: int, k_len: int) -> jax.Array | None:
    """Key-padding / full mask and the causal rule as one mask broadcastable to
    `[batch, heads, q_length, k_length]`, or None when everything is allowed."""
    allowed = base.expand_mask(mask, q_len)
    if causal:
        rule = base.causal_allowed(
            np.arange(q_len)[:, None], np.arange(k_len)[None, :], q_len, k_len
        )
        allowed = jnp.asarray(rule) if allowed is None else allowed & rule
    return allowed


@dataclasses.dataclass(frozen=True)
class Dense:
    """Exact attention, the reference every other kernel is tested against.

    Attributes:
      dropout_rate: attention-weight dropout, applied only when the call gets an `rng`.
      implementation: "xla" is the einsum path here, for every device and dtype. "cudnn" calls
        `jax.nn.dot_product_attention(implementation="cudnn")` (GPU, float16/bfloat16, no dropout);
        it is checked against "xla" by tests/attention/test_dense.py on a GPU machine.
    """

    dropout_rate: float = 0.0
    implementation: Literal["xla", "cudnn"] = "xla"

    def __post_init__(self):
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
        if self.implementation not in ("xla", "cudnn"):
            raise ValueError(
                f"implementation must be 'xla' or 'cudnn', got {self.implementation!r}"
            )

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
    ) -> jax.Array:
        _, q_len, k_len, _, head_dim = base.check_inputs(q, k, v, mask, bias)
        scale = base.default_scale(head_dim, scale)
        if self.implementation == "cudnn":
            return self._cudnn(q, k, v, mask, causal, bias, scale, rng)
        allowed = combine_masks(mask, causal, q_len, k_len)
        return dense_attention(
            q, k, v, allowed, bias=bias, scale=scale, dropout_rate=self.dropout_rate, rng=rng
        )

    def init_cache(self, batch: int, max_length: int, heads: int, head_dim: int, dtype) -> KVCache:
        return init_kv_cache(batch, max_length, heads, head_dim, dtype)

    def decode(
        self,
        cache: KVCache,
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        mask: jax.Array | None = None,
        *,
        scale: float | None = None,
    ) -> tuple[jax.Array, KVCache]:
        """Attends n new tokens (q, k, v `[batch, n, heads, head_dim]`, `mask` `[batch, n]` True
        for real tokens) causally to everything decoded so far; returns (out, new cache)."""
        check_decode_inputs(q, k, v, mask, *cache.key.shape[2:])
        cache = append_kv(cache, k, v, mask)
        return decode_against_cache(cache, q, base.default_scale(q.shape[-1], scale)), cache

    def _cudnn(self, q, k, v, mask, causal, bias, scale, rng):
        if rng is not None and self.dropout_rate > 0.0:
            raise ValueError("implementation='cudnn' has no attention dropout; use 'xla'")
        if q.dtype not in (jnp.float16, jnp.bfloat16):
            raise ValueError(f"implementation='cudnn' needs float16 or bfloat16, got {q.dtype}")
        full = base.expand_mask(mask, q.shape[1])
        if full is not None:
            full = jnp.broadcast_to(full, (q.shape[0], full.shape[1], q.shape[1], k.shape[1]))
        if causal and q.shape[1] != k.shape[1]:
            raise ValueError("implementation='cudnn' supports causal only for q_length == k_length")
        return jax.nn.dot_product_attention(
            q, k, v, bias=bias, mask=full, scale=scale, is_causal=causal, implementation="cudnn"
        )


@flax.struct.dataclass
class KVCache:
    """Keys and values of every position decoded so far.

    key/value `[batch, max_length, heads, head_dim]`, valid `[batch, max_length]` (False for
    padding and for slots not written yet), index: the number of positions written.
    """

    key: jax.Array
    value: jax.Array
    valid: jax.Array
    index: jax.Array


def init_kv_cache(batch: int, max_length: int, heads: int, head_dim: int, dtype) -> KVCache:
    zeros = jnp.zeros((batch, max_length, heads, head_dim), dtype)
    return KVCache(zeros, zeros, jnp.zeros((batch, max_length), bool), jnp.zeros((), jnp.int32))


def append_kv(cache: KVCache, k: jax.Array, v: jax.Array, mask: jax.Array | None) -> KVCache:
    """Writes n new positions `[batch, n, heads, head_dim]` at `cache.index`."""
    batch, n = k.shape[:2]
    valid = jnp.ones((batch, n), bool) if mask is None else mask
    start = (0, cache.index, 0, 0)
    return KVCache(
        key=jax.lax.dynamic_update_slice(cache.key, k.astype(cache.key.dtype), start),
        value=jax.lax.dynamic_update_slice(cache.value, v.astype(cache.value.dtype), start),
        valid=jax.lax.dynamic_update_slice(cache.valid, valid, (0, cache.index)),
        index=cache.index + n,
    )


def check_decode_inputs(q, k, v, mask, cache_heads: int, cache_head_dim: int) -> None:
    base.check_inputs(q, k, v)
    if q.shape[1] != k.shape[1]:
        raise ValueError(
            "decoding takes as many new keys as queries, got q "
            f"{tuple(q.shape)}, k {tuple(k.shape)}"
        )
    if q.shape[2:] != (cache_heads, cache_head_dim):
        raise ValueError(
            f"q has shape {tuple(q.shape)}, expected (batch, n, {cache_heads}, {cache_head_dim}) "
            "as the cache was made"
        )
    if mask is not None and (mask.dtype != jnp.bool_ or mask.shape != k.shape[:2]):
        raise ValueError(
            f"decoding mask must be boolean {tuple(k.shape[:2])} (validity of the new keys), "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )


def decode_against_cache(
    cache: KVCache, q: jax.Array, scale: float, allowed_extra: jax.Array | None = None
) -> jax.Array:
    """Causal attention of the n newest queries over a cache that already holds their keys.

    `allowed_extra` (broadcastable to `[n, max_length]`) narrows what each query may see, for
    patterns decoded against a full cache.
    """
    n, max_length = q.shape[1], cache.key.shape[1]
    q_pos = cache.index - n + jnp.arange(n)
    k_pos = jnp.arange(max_length)
    allowed = k_pos[None, :] <= q_pos[:, None]
    if allowed_extra is not None:
        allowed = allowed & allowed_extra
    allowed = allowed[None, None] & cache.valid[:, None, None, :]
    return dense_attention(q, cache.key, cache.value, allowed, bias=None, scale=scale)
