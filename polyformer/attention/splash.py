"""Dense and sparse attention on TPUs: JAX's splash attention (Pallas block-sparse flash
attention) behind the kernel contract of base.py.

Splash takes one static mask per head (`[q_length, k_length]`, block-aligned lengths), segment ids
and grouped-query heads, and visits only the blocks its mask info marks non-empty. Here:

* lengths are padded to whole blocks; padded keys get a key segment id no query has (ids are
  doubled, padding is odd), so they are never seen; padded queries are dropped;
* a key-padding mask becomes key segment ids the same way, and the caller's segment ids pass
  through doubled;
* a pattern becomes `PatternMask`, a splash mask that evaluates `pattern.allows` one block at a
  time on the host: no `[q_length, k_length]` array is ever built, and the blocks splash visits
  are those where the pattern (and the causal rule) allows a pair;
* splash leaves a query that sees no key undefined (a row of a visited block that is all masked
  averages its values; a row of no visited block divides by zero), so such rows are found and set
  to 0: from the host-side mask when only the static mask can empty a row, else from splash's
  log-sum-exp, which is far below any real logit for exactly those rows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

from polyformer.attention import base, patterns

# Splash's tiles: the key block must be a multiple of the TPU's 128 lanes.
BLOCK = 128

# The most blocks a side of splash's grid may have. Splash prefetches its block tables (up to one
# entry per grid cell, per pass and per distinct head mask) into the TPU's scalar memory: a
# 512 x 512 grid (64K tokens in 128-token blocks) overflows it on v5e, a 256 x 256 grid (64K
# tokens in 256-token blocks) compiles. Smaller blocks keep a sparse pattern's partial blocks
# smaller (benchmarks/RESULTS.md, "Attention compiled for the hardware").
MAX_GRID = 256


def block_for(length: int, at_least: int = BLOCK) -> int:
    """Splash's block for a sequence of `length` tokens: the smallest multiple of 128 that is at
    least `at_least`, doubled until `length` spans at most MAX_GRID blocks."""
    block = -(-max(at_least, BLOCK) // BLOCK) * BLOCK
    while -(-length // block) > MAX_GRID:
        block *= 2
    return block


class PatternMask(splash_mask.Mask):
    """A pattern, optionally with the causal rule, over lengths padded to `shape`; positions past
    (q_len, k_len) are never allowed. Evaluated per requested slice (splash asks for one block at a
    time), never as a whole."""

    def __init__(
        self,
        pattern: patterns.Pattern | None,
        q_len: int,
        k_len: int,
        shape: tuple[int, int],
        causal: bool,
    ):
        self.pattern, self.q_len, self.k_len = pattern, q_len, k_len
        self._shape, self.causal = shape, causal
        self._kept: dict[int, np.ndarray] = {}
        # Splash reads every block several times (forward, dq, dkv; twice each): each kept
        # block's mask is evaluated once and held deduplicated, as splash holds them itself.
        self._block_ids: dict[tuple[int, int, int], int] = {}
        self._distinct: dict[bytes, int] = {}
        self._blocks: list[np.ndarray] = []

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    def kept_blocks(self, block: int) -> np.ndarray:
        """bool `[q_blocks, k_blocks]` of the real lengths: the pattern's block mask (and the
        causal rule's), a superset of the blocks holding an allowed pair."""
        if block not in self._kept:
            n_q, n_k = -(-self.q_len // block), -(-self.k_len // block)
            kept = np.ones((n_q, n_k), bool)
            if self.pattern is not None:
                kept = self.pattern.block_mask(self.q_len, self.k_len, block)
            if self.causal:
                kept = kept & base.causal_block_mask(self.q_len, self.k_len, block)
            self._kept[block] = kept
        return self._kept[block]

    def __getitem__(self, idx) -> np.ndarray:
        q_range, k_range = (range(*s.indices(n)) for s, n in zip(idx, self._shape, strict=True))
        size = len(q_range)
        aligned = size == len(k_range) and q_range.start % size == 0 and k_range.start % size == 0
        inside = aligned and q_range.start < self.q_len and k_range.start < self.k_len
        # Splash asks block by block: the blocks the block mask rules out are not evaluated.
        if inside and not self.kept_blocks(size)[q_range.start // size, k_range.start // size]:
            return _empty_block(size)
        rows = np.arange(q_range.start, q_range.stop, q_range.step)[:, None]
        cols = np.arange(k_range.start, k_range.stop, k_range.step)[None, :]
        if not inside:
            return np.broadcast_to(self.allows(rows, cols), (rows.size, cols.size))
        key = (q_range.start, k_range.start, size)
        if key not in self._block_ids:
            block = np.ascontiguousarray(np.broadcast_to(self.allows(rows, cols), (size, size)))
            block.flags.writeable = False  # handed to splash, shared between blocks
            index = self._distinct.setdefault(block.tobytes(), len(self._blocks))
            if index == len(self._blocks):
                self._blocks.append(block)
            self._block_ids[key] = index
        return self._blocks[self._block_ids[key]]

    def allows(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        allowed = (rows < self.q_len) & (cols < self.k_len)
        if self.pattern is not None:
            allowed = allowed & self.pattern.allows(rows, cols, self.q_len, self.k_len)
        if self.causal:
            allowed = allowed & base.causal_allowed(rows, cols, self.q_len, self.k_len)
        return allowed

    def _key(self) -> tuple:
        return (self.pattern, self.q_len, self.k_len, self._shape, self.causal)

    def __eq__(self, other) -> bool:
        return isinstance(other, PatternMask) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


@functools.cache
def _empty_block(size: int) -> np.ndarray:
    empty = np.zeros((size, size), bool)
    empty.flags.writeable = False  # shared
    return empty


_BLOCK_FIELDS = (
    "block_q", "block_kv", "block_kv_compute", "block_q_dkv", "block_kv_dkv",
    "block_kv_dkv_compute", "block_q_dq", "block_kv_dq",
)  # fmt: skip


def block_sizes(block: int) -> splash.BlockSizes:
    """One square block for every pass: the pattern's block plan is laid out in it."""
    return splash.BlockSizes(**dict.fromkeys(_BLOCK_FIELDS, block))


def make_kernel(mask: PatternMask, heads: int, block: int, interpret: bool):
    """Splash's kernel for `mask` on every head; the mask info is cached by splash per mask."""
    return splash.make_splash_mha_single_device(
        splash_mask.MultiHeadMask([mask] * heads),
        block_sizes=block_sizes(block),
        interpret=interpret,
    )


def visited_blocks(mask: PatternMask, block: int) -> np.ndarray:
    """bool `[q_blocks, k_blocks]`: the blocks splash's forward pass computes for `mask`.

    Splash shrinks its grid to the widest row of kept blocks: step j of query block i computes
    key block data_next[i, j] when block_mask[i, j] is not 0."""
    info = make_kernel(mask, 1, block, interpret=True).fwd_mask_info
    steps = np.asarray(info.block_mask)[0] > 0
    rows = np.broadcast_to(np.arange(steps.shape[0])[:, None], steps.shape)
    visited = np.zeros((mask.shape[0] // block, mask.shape[1] // block), bool)
    visited[rows[steps], np.asarray(info.data_next)[0][steps]] = True
    return visited


def rows_with_keys(mask: PatternMask, block: int) -> np.ndarray:
    """bool `[q_len]`: queries the static mask lets see some key, evaluated block by block over
    the kept blocks of each query block until all its rows have one."""
    rows = np.arange(mask.q_len)
    if mask.pattern is None:  # every key, or (causal) every key up to the query's position
        return base.causal_allowed(rows, 0, mask.q_len, mask.k_len) if mask.causal else rows >= 0
    has = np.zeros(mask.q_len, bool)
    for a, kept_row in enumerate(mask.kept_blocks(block)):
        q_rows = rows[a * block : (a + 1) * block, None]
        for b in np.flatnonzero(kept_row):
            cols = np.arange(b * block, min((b + 1) * block, mask.k_len))[None, :]
            has[q_rows[:, 0]] |= mask.allows(q_rows, cols).any(axis=1)
            if has[q_rows[:, 0]].all():
                break
    return has


# jit: every layer of a model calls this with the same shapes, and tracing a Pallas kernel is
# slow; the cache traces it once.
@functools.partial(jax.jit, static_argnames=("pattern", "causal", "scale", "block", "interpret"))
def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    pattern: patterns.Pattern | None,
    causal: bool,
    key_valid: jax.Array | None,
    segments: tuple[jax.Array, jax.Array] | None,
    scale: float,
    block: int = BLOCK,
    interpret: bool,
) -> jax.Array:
    """Splash attention of q `[batch, q_length, heads, head_dim]` over k/v `[batch, k_length,
    kv_heads, head_dim]` through `pattern` (None: every pair) and the causal rule, keys masked by
    `key_valid` `[batch, k_length]` and `segments`, in blocks of `block_for(length, block)`.
    Returns `[batch, q_length, heads, head_dim]`."""
    batch, q_len, heads, _ = q.shape
    k_len = k.shape[1]
    block = block_for(max(q_len, k_len), block)
    q_pad, k_pad = -q_len % block, -k_len % block
    mask = PatternMask(pattern, q_len, k_len, (q_len + q_pad, k_len + k_pad), causal)
    static_rows = rows_with_keys(mask, block)
    if not static_rows.any():  # splash cannot plan a mask with no pair at all
        return jnp.zeros(q.shape[:3] + v.shape[3:], q.dtype)
    kernel = make_kernel(mask, heads, block, interpret)

    def heads_major(x, pad):  # [batch, length, heads, dim] -> [batch, heads, padded, dim]
        return jnp.swapaxes(jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))), 1, 2)

    qh = heads_major((q.astype(jnp.float32) * scale).astype(q.dtype), q_pad)
    kh, vh = heads_major(k, k_pad), heads_major(v, k_pad)
    dynamic = key_valid is not None or segments is not None
    if dynamic or k_pad:
        if segments is None:
            segments = jnp.zeros((batch, q_len), jnp.int32), jnp.zeros((batch, k_len), jnp.int32)
        q_ids, k_ids = segments
        valid = jnp.ones((batch, k_len), bool) if key_valid is None else key_valid
        k_ids = jnp.where(valid, 2 * k_ids, 2 * k_ids + 1)
        q_ids = jnp.pad(2 * q_ids.astype(jnp.int32), ((0, 0), (0, q_pad)))
        k_ids = jnp.pad(k_ids.astype(jnp.int32), ((0, 0), (0, k_pad)), constant_values=1)
        ids = splash.SegmentIds(q_ids, k_ids)
        out = jax.vmap(kernel)(qh, kh, vh, segment_ids=ids)
    else:
        ids = None
        out = jax.vmap(kernel)(qh, kh, vh)
    out = jnp.swapaxes(out, 1, 2)[:, :q_len]
    if dynamic:
        seen = _rows_seen(kernel, qh, kh, vh, ids)[:, :q_len]
    else:
        seen = jnp.asarray(static_rows)[None, :]
    if isinstance(seen, jax.Array) or not bool(np.all(seen)):
        out = jnp.where(seen[:, :, None, None], out, 0)
    return out.astype(q.dtype)


def _rows_seen(kernel, qh, kh, vh, ids) -> jax.Array:
    """bool `[batch, q_padded]`: queries that see at least one key, from a forward pass that
    returns splash's log-sum-exp (its masked logits are -0.7 * float32 max, so a row that saw only
    masked entries, or nothing, ends far below any real log-sum-exp)."""
    run = jax.vmap(lambda q, k, v, i: _with_residuals(kernel)(q, k, v, segment_ids=i))
    _, (lse,) = run(*jax.lax.stop_gradient((qh, kh, vh)), ids)
    return jnp.min(lse, axis=1) > 0.5 * splash.DEFAULT_MASK_VALUE


def _with_residuals(kernel):
    return splash.SplashAttentionKernel(
        kernel.fwd_mask_info,
        None,
        None,
        **dict(kernel.kwargs, save_residuals=True),
    )
