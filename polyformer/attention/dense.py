"""Exact softmax attention: softmax(q k^T * scale + bias) v."""

from __future__ import annotations

import dataclasses
from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from polyformer.attention import base, flash_gpu, patterns, splash

# On CPU, large problems run in query chunks of about this many score bytes (float32, all batch
# entries and heads); see benchmarks/RESULTS.md, "Dense attention on CPU", for the measurements.
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

    q `[batch, q_length, heads, head_dim]`, k/v `[batch, k_length, kv_heads, dim]` (kv_heads
    divides heads); `allowed` broadcasts to `[batch, heads, q_length, k_length]`, and so does
    `bias`. Returns `[batch, q_length, heads, dim]`.

    Every query row is softmax(q k^T * scale + bias) v over its own row, so rows can be computed
    in any grouping with the same result. When lowered for a CPU, large problems go through query
    chunks (a `lax.map` with `jax.checkpoint` per chunk): only one chunk's scores exist at a time,
    forward and backward, so memory is O(chunk x k_length) instead of O(q_length x k_length), and
    a chunk stays in cache. Accelerators get one fused computation.
    """
    batch, q_len, heads, _ = q.shape
    k_len, kv_heads = k.shape[1], k.shape[2]
    # Heads-major layouts once, so both matmuls are plain batched GEMMs and the probabilities
    # are never transposed.
    qh, kh, vh = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
    allowed = _as_4d(allowed)
    bias = _as_4d(bias)
    chunks = _chunking(batch, heads, heads // kv_heads, q_len, k_len)

    def whole():
        return _attend(qh, kh, vh, allowed, bias, scale, dropout_rate, rng)

    if chunks is None:
        out = whole()
    else:

        def in_chunks():
            return _attend_in_chunks(qh, kh, vh, allowed, bias, scale, dropout_rate, rng, chunks)

        out = base.per_platform(cpu=in_chunks, tpu=whole, cuda=whole)
    return jnp.swapaxes(out, 1, 2).astype(q.dtype)


@dataclasses.dataclass(frozen=True)
class _Chunks:
    """One chunk: `batch` batch entries x `heads` heads x `rows` query rows, against all keys."""

    batch: int
    heads: int
    rows: int


def _chunking(batch: int, heads: int, group: int, q_len: int, k_len: int) -> _Chunks | None:
    """How to split `[batch, heads, q_len, k_len]` float32 scores into chunks of about
    _CHUNK_BYTES, or None when the whole matrix is small enough to compute at once.

    Rows are split only when one head's `[q_len, k_len]` is bigger than a chunk; otherwise a
    chunk takes whole heads, then whole batch entries (divisors, so that every chunk is alike).
    The heads of a chunk divide `group` (query heads per key/value head) or are whole groups, so
    a chunk reads one contiguous run of key/value heads.
    """
    if batch * heads * q_len * k_len * 4 <= _CHUNK_ABOVE_BYTES:
        return None
    row_bytes = k_len * 4
    rows = _CHUNK_BYTES // row_bytes
    if rows < q_len:
        rows = max(_MIN_CHUNK_ROWS, rows // _MIN_CHUNK_ROWS * _MIN_CHUNK_ROWS)
        return _Chunks(1, 1, min(rows, q_len))
    head_bytes = q_len * row_bytes
    per_chunk = _largest_divisor(heads, _CHUNK_BYTES // head_bytes, group)
    if per_chunk < heads:
        return _Chunks(1, per_chunk, q_len)
    return _Chunks(_largest_divisor(batch, _CHUNK_BYTES // (heads * head_bytes)), heads, q_len)


def _largest_divisor(n: int, limit: int, group: int = 1) -> int:
    """The largest divisor of n up to `limit` (at least 1) that divides `group` or is a multiple
    of it."""
    return max(
        d
        for d in range(1, n + 1)
        if n % d == 0 and d <= max(limit, 1) and (group % d == 0 or d % group == 0)
    )


def _as_4d(x: jax.Array | None) -> jax.Array | None:
    """A mask or bias that broadcasts to `[batch, heads, q, k]`, with all four axes present."""
    return x if x is None or x.ndim == 4 else x.reshape((1,) * (4 - x.ndim) + x.shape)


def _attend(qh, kh, vh, allowed, bias, scale, dropout_rate, rng) -> jax.Array:
    """softmax(q k^T * scale + bias) v in heads-major layout: qh `[batch, heads, q, d]`, kh/vh
    `[batch, kv_heads, k, d]`; returns float32 `[batch, heads, q, dim]`.

    Query heads are viewed as `[kv_heads, group]` (a free reshape), so grouped heads share their
    key/value head without a copy of it."""
    batch, heads, q_len, head_dim = qh.shape
    kv_heads = kh.shape[1]
    qg = qh.reshape(batch, kv_heads, heads // kv_heads, q_len, head_dim)
    scores = jnp.einsum("bhgqd,bhkd->bhgqk", qg, kh, preferred_element_type=jnp.float32)
    scores = scores.reshape(batch, heads, q_len, -1) * scale
    if bias is not None:
        scores = scores + bias.astype(jnp.float32)
    weights = _softmax(scores, allowed, bias is None)
    weights = base.dropout(weights, dropout_rate, rng).astype(vh.dtype)
    weights = weights.reshape(batch, kv_heads, heads // kv_heads, q_len, -1)
    out = jnp.einsum("bhgqk,bhkd->bhgqd", weights, vh, preferred_element_type=jnp.float32)
    return out.reshape(batch, heads, q_len, -1)


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
    group = heads // kh.shape[1]
    n_batch, n_heads, n_rows = batch // c.batch, heads // c.heads, q_len // c.rows
    tail = q_len - n_rows * c.rows

    def chunk(index, b, h, start, size):
        def block(x, rows: bool, broadcasts: bool = False, kv: bool = False):
            """The chunk's part of `[batch, heads, q or k, dim]` x (of its query rows if `rows`;
            of its key/value heads if `kv`); for a mask or bias (`broadcasts`), an axis of size 1
            is kept whole."""
            heads_span = (h * c.heads, c.heads)
            if kv:
                heads_span = (h * c.heads // group, max(1, c.heads // group))
            spans = [
                (b * c.batch, c.batch),
                heads_span,
                (start, size) if rows else (0, x.shape[2]),
                (0, x.shape[3]),
            ]
            if broadcasts:
                spans = [(0, 1) if n == 1 else span for n, span in zip(x.shape, spans, strict=True)]
            starts, sizes = zip(*spans, strict=True)
            return jax.lax.dynamic_slice(x, starts, sizes)

        q = block(qh, rows=True)
        k, v = block(kh, rows=False, kv=True), block(vh, rows=False, kv=True)
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


@dataclasses.dataclass(frozen=True)
class Dense(base.Kernel):
    """Exact attention, the reference every other kernel is tested against.

    Attributes:
      dropout_rate: attention-weight dropout, applied only when the call gets an `rng`.
      implementation: "xla" is the einsum path here, for every device and dtype (query chunks on
        CPU, one fused computation elsewhere). "pallas_tpu" is JAX's splash attention
        (splash.py) and "pallas_gpu" JAX's Pallas flash attention for GPUs (flash_gpu.py), or
        for what that kernel cannot take (grouped heads, a key-padding mask, a pair of segment-id
        arrays) our block-sparse GPU kernel with every block kept; they take no bias, no full 4-D
        mask and no dropout (ValueError). "cudnn" calls
        `jax.nn.dot_product_attention(implementation="cudnn")` (GPU, float16/bfloat16, no
        dropout). "auto" (default) takes the Pallas kernel of the platform the program is lowered
        for when it can honour the call's arguments, and "xla" otherwise.
    """

    dropout_rate: float = 0.0
    implementation: Literal["auto", "xla", "pallas_tpu", "pallas_gpu", "cudnn"] = "auto"

    def __post_init__(self):
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
        base.check_implementation(self.implementation, (*base.IMPLEMENTATIONS, "cudnn"))

    def _attend(self, q, k, v, mask, causal, bias, scale, rng, segment_ids, segments) -> jax.Array:
        q_len, k_len = q.shape[1], k.shape[1]
        if self.implementation == "cudnn":
            return self._cudnn(q, k, v, mask, causal, bias, scale, rng, segments)

        def xla():
            allowed = base.allowed_pairs(mask, causal, segments, q_len, k_len)
            return dense_attention(
                q, k, v, allowed, bias=bias, scale=scale, dropout_rate=self.dropout_rate, rng=rng
            )

        def tpu(q, k, v, mask, segments, interpret: bool):
            return splash.attention(
                q,
                k,
                v,
                pattern=None,
                causal=causal,
                key_valid=mask,
                segments=segments,
                scale=scale,
                interpret=interpret,
            )

        def gpu(q, k, v, mask, segments, interpret: bool):
            if flash_gpu.unsupported(q, k, mask, causal, segment_ids) is None:
                return flash_gpu.attention(
                    q, k, v, causal=causal, segments=segments, scale=scale, interpret=interpret
                )
            # What JAX's kernel cannot take (grouped heads, a key-padding mask, two segment-id
            # arrays) goes to our block-sparse kernel with a pattern that keeps every pair.
            return flash_gpu.block_sparse(
                q,
                k,
                v,
                patterns.band(max(q_len, k_len)),
                causal=causal,
                key_mask=mask,
                segments=segments,
                scale=scale,
                block=64,
                interpret=interpret,
            )

        unsupported = base.pallas_unsupported(mask, bias, rng, self.dropout_rate)
        args = (q, k, v, mask, segments)
        return base.dispatch(self.implementation, unsupported, args, xla=xla, tpu=tpu, gpu=gpu)

    def _probabilities(self, q, k, mask, causal, bias, scale, segments) -> jax.Array:
        allowed = base.allowed_pairs(mask, causal, segments, q.shape[1], k.shape[1])
        return base.softmax_probabilities(q, k, allowed, bias, scale)

    def init_cache(self, batch: int, max_length: int, heads: int, head_dim: int, dtype) -> KVCache:
        """An empty cache; `heads` is the number of key/value heads."""
        return init_kv_cache(batch, max_length, heads, head_dim, dtype)

    def _decode(self, cache, q, k, v, mask, scale, segment_ids) -> tuple[jax.Array, KVCache]:
        cache = append_kv(cache, k, v, mask, segment_ids)
        return decode_against_cache(cache, q, scale, segment_ids=segment_ids), cache

    def _cudnn(self, q, k, v, mask, causal, bias, scale, rng, segments):
        if rng is not None and self.dropout_rate > 0.0:
            raise ValueError("implementation='cudnn' has no attention dropout; use 'xla'")
        if q.dtype not in (jnp.float16, jnp.bfloat16):
            raise ValueError(f"implementation='cudnn' needs float16 or bfloat16, got {q.dtype}")
        full = base.and_masks(base.expand_mask(mask, q.shape[1]), base.segment_mask(segments))
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

    key/value `[batch, max_length, kv_heads, head_dim]`, valid `[batch, max_length]` (False for
    padding and for slots not written yet), segment `[batch, max_length]` (each key's segment
    id), index: the number of positions written.
    """

    key: jax.Array
    value: jax.Array
    valid: jax.Array
    segment: jax.Array
    index: jax.Array


def init_kv_cache(batch: int, max_length: int, heads: int, head_dim: int, dtype) -> KVCache:
    zeros = jnp.zeros((batch, max_length, heads, head_dim), dtype)
    return KVCache(
        zeros,
        zeros,
        jnp.zeros((batch, max_length), bool),
        jnp.zeros((batch, max_length), jnp.int32),
        jnp.zeros((), jnp.int32),
    )


def append_kv(
    cache: KVCache,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None,
    segment_ids: jax.Array | None = None,
) -> KVCache:
    """Writes n new positions `[batch, n, kv_heads, head_dim]` (segment ids `[batch, n]`, default
    0) at `cache.index`."""
    batch, n = k.shape[:2]
    valid = jnp.ones((batch, n), bool) if mask is None else mask
    segment = jnp.zeros((batch, n), jnp.int32) if segment_ids is None else segment_ids
    start = (0, cache.index, 0, 0)
    return KVCache(
        key=jax.lax.dynamic_update_slice(cache.key, k.astype(cache.key.dtype), start),
        value=jax.lax.dynamic_update_slice(cache.value, v.astype(cache.value.dtype), start),
        valid=jax.lax.dynamic_update_slice(cache.valid, valid, (0, cache.index)),
        segment=jax.lax.dynamic_update_slice(
            cache.segment, segment.astype(jnp.int32), (0, cache.index)
        ),
        index=cache.index + n,
    )


def decode_against_cache(
    cache: KVCache,
    q: jax.Array,
    scale: float,
    allowed_extra: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
) -> jax.Array:
    """Causal attention of the n newest queries over a cache that already holds their keys.

    `allowed_extra` (broadcastable to `[n, max_length]`) narrows what each query may see, for
    patterns decoded against a full cache; `segment_ids` `[batch, n]` (default 0) to the keys of
    the query's segment.
    """
    n, max_length = q.shape[1], cache.key.shape[1]
    q_pos = cache.index - n + jnp.arange(n)
    k_pos = jnp.arange(max_length)
    allowed = k_pos[None, :] <= q_pos[:, None]
    if allowed_extra is not None:
        allowed = allowed & allowed_extra
    allowed = allowed[None, None] & cache.valid[:, None, None, :]
    segment = jnp.zeros(q.shape[:2], jnp.int32) if segment_ids is None else segment_ids
    allowed = allowed & base.segment_mask((segment, cache.segment))
    return dense_attention(q, cache.key, cache.value, allowed, bias=None, scale=scale)
