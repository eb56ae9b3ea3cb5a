"""Block-sparse flash attention for GPUs in Pallas (Triton): forward and backward visit only the
key blocks a sparse pattern keeps, what FlexAttention does for PyTorch.

    out = block_sparse_attention(
        q, k, v, pattern, *, causal=False, scale=None, key_mask=None,
        q_segment_ids=None, kv_segment_ids=None, block_q=64, block_k=64, interpret=False,
        num_warps=None, num_stages=2,
    )

q `[batch, q_length, heads, head_dim]`, k `[batch, k_length, kv_heads, head_dim]`, v
`[batch, k_length, kv_heads, value_dim]` with kv_heads dividing heads (grouped-query heads: query
head h reads key/value head h // (heads // kv_heads); k and v are never repeated). Returns
`[batch, q_length, heads, value_dim]` in q's dtype. Query i may see key j when
`pattern.allows(i, j, q_length, k_length)`, the causal rule of base.py (queries aligned to the end
of the keys) when `causal`, `key_mask[b, j]` (bool `[batch, k_length]`, True = a real key) and
`q_segment_ids[b, i] == kv_segment_ids[b, j]` (int `[batch, q_length]` and `[batch, k_length]`)
all hold. A query that sees no key returns 0 with zero gradients.

How it works. `make_block_plan` lists, on the host from `pattern.block_mask`, the kept key blocks
of every query block (and, transposed, the query blocks that keep every key block). The forward
kernel runs one program per (query block, batch, head) over the listed key blocks only, with an
online softmax whose statistics are float32 (FlashAttention-2, the structure of
jax.experimental.pallas.ops.gpu.attention). The backward is a custom VJP of two kernels that
visit the same blocks: dq per query block over its key list, and dk/dv per key block (and per
key/value head, summing its query heads) over the transposed list. Inside a visited block the
pattern's element predicate masks exactly: `pattern.allows` runs in the kernel on the block's index
tiles when it is pure index arithmetic (band, dilated, block_local, a few global runs, and their
`|` / `&`); a pattern that looks indices up in a table (random_blocks, many global tokens) cannot
run in a Triton kernel, so its distinct element masks over the kept blocks are computed on the host
and each visited block loads its own by index. Kept blocks whose every pair is allowed (found on the
host from the same element masks) are listed after the partial ones and run without any element
mask, like FlexAttention's full blocks: interior blocks of a band or a block-local window, BigBird's
random and global blocks.

Lengths need not be multiples of the blocks (inputs are padded inside and the padding masked);
head and value dims are padded to a power of two >= 16, and block_q / block_k must be powers of
two >= 16, as Triton's tiles need. `interpret=True` runs the kernels in Pallas interpret mode
(any platform, exact, slow): that is how the tests check them on CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from polyformer.attention import base, patterns

# Masked scores take this finite value (not -inf) so that running-max corrections stay finite.
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
_LOG2E = math.log2(math.e)
# Kept blocks whose element masks are evaluated on the host at once (bounds host memory).
_TILE_CHUNK = 256


@dataclasses.dataclass(frozen=True, eq=False)
class BlockPlan:
    """The blocks the kernels visit, for one (pattern, q_len, k_len, block_q, block_k, causal).

    kept `[n_q_blocks, n_k_blocks]` bool: the pattern's block mask at these block sizes (and the
    causal rule's); the kernels visit exactly its True blocks. full, of the same shape: kept
    blocks inside the sequences whose every pair the pattern and the causal rule allow; the
    kernels skip the element mask there (as FlexAttention skips mask_mod on its full blocks).
    kv_blocks `[n_q_blocks, width]` int32: for query block i, its kept key blocks in its first
    kv_counts[i] entries, the kv_partial[i] partial ones first, then the full ones, each group
    ascending (the rest are 0 and never read); kv_counts and kv_partial `[n_q_blocks]` int32.
    q_blocks `[n_k_blocks, width_t]`, q_counts and q_partial `[n_k_blocks]`: the transpose, the
    query blocks that keep each key block (for dk and dv).
    tiles: None when the pattern's predicate runs inside the kernel; otherwise int8
    `[n_tiles, block_q, block_k]`, the distinct element masks of the partial blocks, with
    kv_tiles `[n_q_blocks, width]` and q_tiles `[n_k_blocks, width_t]` int32 naming each listed
    partial block's.
    """

    kept: np.ndarray
    full: np.ndarray
    kv_blocks: np.ndarray
    kv_counts: np.ndarray
    kv_partial: np.ndarray
    q_blocks: np.ndarray
    q_counts: np.ndarray
    q_partial: np.ndarray
    tiles: np.ndarray | None = None
    kv_tiles: np.ndarray | None = None
    q_tiles: np.ndarray | None = None


def kept_blocks(
    pattern: patterns.Pattern, q_len: int, k_len: int, block_q: int, block_k: int, causal: bool
) -> np.ndarray:
    """bool `[ceil(q_len / block_q), ceil(k_len / block_k)]`: blocks holding a pair the pattern
    (and the causal rule when `causal`) allows, from block masks at gcd(block_q, block_k)."""
    fine_block = math.gcd(block_q, block_k)
    fine = pattern.block_mask(q_len, k_len, fine_block)
    if causal:
        fine &= base.causal_block_mask(q_len, k_len, fine_block)
    n_q, n_k = -(-q_len // block_q), -(-k_len // block_k)
    per_q, per_k = block_q // fine_block, block_k // fine_block
    fine = np.pad(fine, ((0, n_q * per_q - fine.shape[0]), (0, n_k * per_k - fine.shape[1])))
    return fine.reshape(n_q, per_q, n_k, per_k).any(axis=(1, 3))


def make_block_plan(
    pattern: patterns.Pattern,
    q_len: int,
    k_len: int,
    *,
    block_q: int,
    block_k: int,
    causal: bool,
) -> BlockPlan:
    """The plan of blocks to visit (see BlockPlan), made with numpy on the host."""
    kept = kept_blocks(pattern, q_len, k_len, block_q, block_k, causal)
    with_tiles = not _predicate_runs_in_kernel(pattern, q_len, k_len, block_q, block_k)
    full, tile_of_block, tiles = _inspect_blocks(
        pattern, kept, q_len, k_len, block_q, block_k, causal, with_tiles
    )
    kv_blocks, kv_counts, kv_partial = _block_lists(kept, full)
    q_blocks, q_counts, q_partial = _block_lists(kept.T, full.T)
    lists = (kv_blocks, kv_counts, kv_partial, q_blocks, q_counts, q_partial)
    if not with_tiles:
        return BlockPlan(kept, full, *lists)
    kv_tiles = np.take_along_axis(tile_of_block, kv_blocks, axis=1)
    q_tiles = np.take_along_axis(tile_of_block.T, q_blocks, axis=1)
    return BlockPlan(kept, full, *lists, tiles, kv_tiles, q_tiles)


def _block_lists(kept: np.ndarray, full: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each row's kept columns, partial ones then full ones, each ascending, left-aligned and
    zero-padded to the fullest row: (`[rows, width]`, counts `[rows]`, partial counts `[rows]`),
    all int32."""
    rank = np.where(kept, np.where(full, 1, 0), 2)  # partial, full, not kept
    counts = kept.sum(axis=1)
    width = max(1, int(counts.max(initial=0)))
    columns = np.argsort(rank, axis=1, kind="stable")[:, :width]
    columns = np.where(np.arange(width) < counts[:, None], columns, 0)
    partial = (kept & ~full).sum(axis=1)
    return columns.astype(np.int32), counts.astype(np.int32), partial.astype(np.int32)


def _predicate_runs_in_kernel(
    pattern: patterns.Pattern, q_len: int, k_len: int, block_q: int, block_k: int
) -> bool:
    """Whether `pattern.allows` on index tiles is pure arithmetic: a predicate that closes over
    an array (a lookup table) cannot be traced into a Pallas kernel, nor gathered from in Triton."""
    closed = jax.make_jaxpr(lambda i, j: pattern.allows(i, j, q_len, k_len))(
        jax.ShapeDtypeStruct((block_q, 1), jnp.int32),
        jax.ShapeDtypeStruct((1, block_k), jnp.int32),
    )
    return not closed.consts


def _inspect_blocks(
    pattern: patterns.Pattern,
    kept: np.ndarray,
    q_len: int,
    k_len: int,
    block_q: int,
    block_k: int,
    causal: bool,
    with_tiles: bool,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The pattern's element masks over the kept blocks, evaluated on the host in chunks:
    (full `[n_q_blocks, n_k_blocks]` bool, see BlockPlan; and when with_tiles, the tile index of
    each partial block `[n_q_blocks, n_k_blocks]` int32 (0 elsewhere) and the distinct tiles
    `[n_tiles, block_q, block_k]` int8, else None, None)."""
    rows, cols = np.nonzero(kept)
    full = np.zeros(kept.shape, bool)
    tile_of_block = np.zeros(kept.shape, np.int32)
    distinct: dict[bytes, int] = {}
    for start in range(0, len(rows), _TILE_CHUNK):
        r, c = rows[start : start + _TILE_CHUNK], cols[start : start + _TILE_CHUNK]
        q_idx = r[:, None, None] * block_q + np.arange(block_q)[None, :, None]
        k_idx = c[:, None, None] * block_k + np.arange(block_k)[None, None, :]
        shape = (len(r), block_q, block_k)
        masks = np.broadcast_to(pattern.allows(q_idx, k_idx, q_len, k_len), shape)
        inside = masks & (q_idx < q_len) & (k_idx < k_len)
        if causal:
            inside &= base.causal_allowed(q_idx, k_idx, q_len, k_len)
        full[r, c] = inside.all(axis=(1, 2))
        if with_tiles:
            for n in np.flatnonzero(~full[r, c]):
                tile_of_block[r[n], c[n]] = distinct.setdefault(masks[n].tobytes(), len(distinct))
    if not with_tiles:
        return full, None, None
    tiles = np.frombuffer(b"".join(distinct), bool).reshape(-1, block_q, block_k)
    if not len(tiles):  # every kept block is full: one unused tile keeps the input non-empty
        tiles = np.ones((1, block_q, block_k), bool)
    return full, tile_of_block, tiles.astype(np.int8)


@dataclasses.dataclass(frozen=True, eq=False)
class _Static:
    """What the kernels are specialised on (Python values, fixed at trace time)."""

    pattern: patterns.Pattern
    q_len: int
    k_len: int
    block_q: int
    block_k: int
    causal: bool
    scale: float
    group: int  # query heads per key/value head
    interpret: bool
    num_warps: int
    num_stages: int


def _allowed(
    st: _Static, q_start, k_start, tile, q_seg, kv_seg, kv_valid, *, full: bool
) -> jax.Array | None:
    """bool broadcastable to `[block_q, block_k]`: which pairs of the query block starting at
    q_start and the key block starting at k_start may attend, or None for all of them. A full
    block needs only the segment ids and key validity; a partial one also the sequence ends, the
    pattern (`tile`, its element mask `[block_q, block_k]` when the plan has tiles, else the
    pattern's predicate runs here) and the causal rule. q_seg `[block_q]`, kv_seg and kv_valid
    `[block_k]` int32 or None."""
    allowed = None
    if not full:
        q_idx = q_start + jnp.arange(st.block_q, dtype=jnp.int32)[:, None]
        k_idx = k_start + jnp.arange(st.block_k, dtype=jnp.int32)[None, :]
        allowed = (q_idx < st.q_len) & (k_idx < st.k_len)
        if tile is None:
            allowed &= st.pattern.allows(q_idx, k_idx, st.q_len, st.k_len)
        else:
            allowed &= tile != 0
        if st.causal:
            allowed &= base.causal_allowed(q_idx, k_idx, st.q_len, st.k_len)
    for extra in (
        None if q_seg is None else q_seg[:, None] == kv_seg[None, :],
        None if kv_valid is None else kv_valid[None, :] != 0,
    ):
        if extra is not None:
            allowed = extra if allowed is None else allowed & extra
    return allowed


def _scores(st: _Static, q, k, allowed) -> jax.Array:
    """Masked scores in base-2 units, float32 `[block_q, block_k]`: exp2 of them is exp of the
    scaled logits."""
    qk = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    qk *= st.scale * _LOG2E
    return qk if allowed is None else jnp.where(allowed, qk, _MASK_VALUE)


def _exp2(x, allowed) -> jax.Array:
    """exp2(x) where allowed, 0 elsewhere."""
    return jnp.exp2(x) if allowed is None else jnp.where(allowed, jnp.exp2(x), 0.0)


def _tile(tiles_ref, tile_ids_ref, row, slot, full: bool):
    if full or tiles_ref is None:
        return None
    return tiles_ref[tile_ids_ref[row, slot]]


def _over_listed(blocks_ref, counts_ref, partial_ref, row, body, carry):
    """body(slot, carry, full=...) over the blocks listed for `row`: the partial ones, then the
    full ones (two loops, so each compiles with or without the element mask)."""
    partial = partial_ref[row]
    carry = jax.lax.fori_loop(0, partial, functools.partial(body, full=False), carry)
    return jax.lax.fori_loop(partial, counts_ref[row], functools.partial(body, full=True), carry)


def _listed_key_block(st: _Static, refs, i, slot, q_seg, full: bool):
    """The slot-th key block listed for query block i: (its slice of the keys, which pairs may
    attend (see _allowed)). refs: (blocks, tiles, tile ids, kv segment ids, kv valid)."""
    blocks_ref, tiles_ref, tile_ids_ref, kv_seg_ref, kv_valid_ref = refs
    j = blocks_ref[i, slot]
    keys = pl.ds(j * st.block_k, st.block_k)
    allowed = _allowed(
        st,
        i * st.block_q,
        j * st.block_k,
        _tile(tiles_ref, tile_ids_ref, i, slot, full),
        q_seg,
        None if kv_seg_ref is None else kv_seg_ref[keys],
        None if kv_valid_ref is None else kv_valid_ref[keys],
        full=full,
    )
    return keys, allowed


def _probs_and_dscores(st: _Static, q, k, v, do, lse, delta, allowed):
    """The attention weights p `[block_q, block_k]` recomputed from the row statistics, and the
    gradient of the loss wrt the unscaled scores divided by the scale, p * (do.v - delta)."""
    p = _exp2(_scores(st, q, k, allowed) - lse[:, None], allowed)
    dp = jax.lax.dot_general(do, v, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    return p, p * (dp - delta[:, None])


def _dot_t(a, b):
    """a^T b in float32: `[n, m]`, `[n, d]` -> `[m, d]`."""
    return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _forward_kernel(
    q_ref,  # [block_q, head_dim]
    k_ref,  # [k_pad, head_dim]
    v_ref,  # [k_pad, value_dim]
    blocks_ref,  # [n_q_blocks, width]
    counts_ref,  # [n_q_blocks]
    partial_ref,  # [n_q_blocks]
    tiles_ref,  # [n_tiles, block_q, block_k] or None
    tile_ids_ref,  # [n_q_blocks, width] or None
    q_seg_ref,  # [block_q] or None
    kv_seg_ref,  # [k_pad] or None
    kv_valid_ref,  # [k_pad] or None
    o_ref,  # [block_q, value_dim]
    lse_ref,  # [block_q]
    *,
    st: _Static,
):
    i = pl.program_id(0)
    bq = st.block_q
    q = q_ref[...]
    q_seg = None if q_seg_ref is None else q_seg_ref[...]
    refs = (blocks_ref, tiles_ref, tile_ids_ref, kv_seg_ref, kv_valid_ref)

    def body(slot, carry, full):
        o, m, total = carry
        keys, allowed = _listed_key_block(st, refs, i, slot, q_seg, full)
        s = _scores(st, q, k_ref[keys, :], allowed)
        m_next = jnp.maximum(m, jnp.max(s, axis=1))
        correction = jnp.exp2(m - m_next)
        p = _exp2(s - m_next[:, None], allowed)
        v = v_ref[keys, :]
        pv = jax.lax.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
        return correction[:, None] * o + pv, m_next, correction * total + jnp.sum(p, axis=1)

    o = jnp.zeros((bq, o_ref.shape[-1]), jnp.float32)
    m = jnp.full((bq,), _MASK_VALUE, jnp.float32)
    total = jnp.zeros((bq,), jnp.float32)
    o, m, total = _over_listed(blocks_ref, counts_ref, partial_ref, i, body, (o, m, total))
    seen = total > 0.0
    o_ref[...] = (o / jnp.where(seen, total, 1.0)[:, None]).astype(o_ref.dtype)
    # A row that saw no key gets +inf, so exp2(s - lse) is 0 for it in the backward kernels.
    lse_ref[...] = jnp.where(seen, m + jnp.log2(jnp.where(seen, total, 1.0)), jnp.inf)


def _dq_kernel(
    q_ref,  # [block_q, head_dim]
    k_ref,  # [k_pad, head_dim]
    v_ref,  # [k_pad, value_dim]
    do_ref,  # [block_q, value_dim]
    lse_ref,  # [block_q]
    delta_ref,  # [block_q]
    blocks_ref,
    counts_ref,
    partial_ref,
    tiles_ref,
    tile_ids_ref,
    q_seg_ref,
    kv_seg_ref,
    kv_valid_ref,
    dq_ref,  # [block_q, head_dim]
    *,
    st: _Static,
):
    i = pl.program_id(0)
    q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]
    q_seg = None if q_seg_ref is None else q_seg_ref[...]
    refs = (blocks_ref, tiles_ref, tile_ids_ref, kv_seg_ref, kv_valid_ref)

    def body(slot, dq, full):
        keys, allowed = _listed_key_block(st, refs, i, slot, q_seg, full)
        k = k_ref[keys, :]
        _, ds = _probs_and_dscores(st, q, k, v_ref[keys, :], do, lse, delta, allowed)
        return dq + jax.lax.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

    dq = jnp.zeros((st.block_q, dq_ref.shape[-1]), jnp.float32)
    dq = _over_listed(blocks_ref, counts_ref, partial_ref, i, body, dq)
    dq_ref[...] = (dq * st.scale).astype(dq_ref.dtype)


def _dkdv_kernel(
    q_ref,  # [q_pad, group, head_dim]: the query heads of this key/value head
    k_ref,  # [block_k, head_dim]
    v_ref,  # [block_k, value_dim]
    do_ref,  # [q_pad, group, value_dim]
    lse_ref,  # [group, q_pad]
    delta_ref,  # [group, q_pad]
    blocks_ref,  # [n_k_blocks, width_t]: the query blocks that keep each key block
    counts_ref,  # [n_k_blocks]
    partial_ref,  # [n_k_blocks]
    tiles_ref,
    tile_ids_ref,  # [n_k_blocks, width_t] or None
    q_seg_ref,  # [q_pad] or None
    kv_seg_ref,  # [block_k] or None
    kv_valid_ref,  # [block_k] or None
    dk_ref,  # [block_k, head_dim]
    dv_ref,  # [block_k, value_dim]
    *,
    st: _Static,
):
    j = pl.program_id(0)
    bq, bk = st.block_q, st.block_k
    k, v = k_ref[...], v_ref[...]
    kv_seg = None if kv_seg_ref is None else kv_seg_ref[...]
    kv_valid = None if kv_valid_ref is None else kv_valid_ref[...]

    def body(slot, carry, full):
        i = blocks_ref[j, slot]
        queries = pl.ds(i * bq, bq)
        allowed = _allowed(
            st,
            i * bq,
            j * bk,
            _tile(tiles_ref, tile_ids_ref, j, slot, full),
            None if q_seg_ref is None else q_seg_ref[queries],
            kv_seg,
            kv_valid,
            full=full,
        )

        def per_head(head, carry):  # the query heads sharing this key/value head
            dk, dv = carry
            q, do = q_ref[queries, head, :], do_ref[queries, head, :]
            lse, delta = lse_ref[head, queries], delta_ref[head, queries]
            p, ds = _probs_and_dscores(st, q, k, v, do, lse, delta, allowed)
            return dk + _dot_t(ds.astype(q.dtype), q), dv + _dot_t(p.astype(do.dtype), do)

        return jax.lax.fori_loop(0, st.group, per_head, carry)

    dk = jnp.zeros((bk, dk_ref.shape[-1]), jnp.float32)
    dv = jnp.zeros((bk, dv_ref.shape[-1]), jnp.float32)
    dk, dv = _over_listed(blocks_ref, counts_ref, partial_ref, j, body, (dk, dv))
    dk_ref[...] = (dk * st.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _whole(x) -> pl.BlockSpec | None:
    """The whole array in every program (plan arrays, tiles), or None for an absent input."""
    return None if x is None else pl.BlockSpec(x.shape, lambda *_: (0,) * x.ndim)


def _plan_inputs(plan: BlockPlan, by_key_block: bool):
    """The plan arrays one grid reads: per query block (forward, dq) or per key block (dk/dv)."""
    if by_key_block:
        arrays = (plan.q_blocks, plan.q_counts, plan.q_partial, plan.tiles, plan.q_tiles)
    else:
        arrays = (plan.kv_blocks, plan.kv_counts, plan.kv_partial, plan.tiles, plan.kv_tiles)
    return [None if a is None else jnp.asarray(a) for a in arrays], [_whole(a) for a in arrays]


def _side(x, length: int, index_map) -> pl.BlockSpec | None:
    """A `[batch, length]` side input (segment ids, key validity): `length` entries of a row."""
    return None if x is None else pl.BlockSpec((None, length), index_map)


def _query_grid_specs(st: _Static, k_pad: int, q_seg, kv_seg, kv_valid):
    """BlockSpecs for a grid over (query block i, batch b, head h): a query-side block of
    `[block_q, dim]`, the key/value head's whole `[k_pad, dim]`, the row statistics `[block_q]`,
    and the side inputs (this query block's segment ids, every key's segment id and validity)."""
    bq, g = st.block_q, st.group

    def query_block(dim):
        return pl.BlockSpec((None, bq, None, dim), lambda i, b, h: (b, i, h, 0))

    def kv_whole(dim):
        return pl.BlockSpec((None, k_pad, None, dim), lambda i, b, h: (b, 0, h // g, 0))

    row_stat = pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, i))
    sides = [
        _side(q_seg, bq, lambda i, b, h: (b, i)),
        _side(kv_seg, k_pad, lambda i, b, h: (b, 0)),
        _side(kv_valid, k_pad, lambda i, b, h: (b, 0)),
    ]
    return query_block, kv_whole, row_stat, sides


def _key_grid_specs(st: _Static, q_pad: int, q_seg, kv_seg, kv_valid):
    """BlockSpecs for a grid over (key block j, batch b, key/value head h): the query-side
    arrays of the head's query group whole `[q_pad, group, dim]`, a key-side block
    `[block_k, dim]`, the group's row statistics `[group, q_pad]`, and the side inputs."""
    bk, g = st.block_k, st.group

    def query_group(dim):
        return pl.BlockSpec((None, q_pad, g, dim), lambda j, b, h: (b, 0, h, 0))

    def key_block(dim):
        return pl.BlockSpec((None, bk, None, dim), lambda j, b, h: (b, j, h, 0))

    group_stat = pl.BlockSpec((None, g, q_pad), lambda j, b, h: (b, h, 0))
    sides = [
        _side(q_seg, q_pad, lambda j, b, h: (b, 0)),
        _side(kv_seg, bk, lambda j, b, h: (b, j)),
        _side(kv_valid, bk, lambda j, b, h: (b, j)),
    ]
    return query_group, key_block, group_stat, sides


def _call(st: _Static, kernel, name: str, grid, in_specs, out_specs, out_shape, *args):
    return pl.pallas_call(
        functools.partial(kernel, st=st),
        grid=grid,
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=plgpu.CompilerParams(num_warps=st.num_warps, num_stages=st.num_stages),
        interpret=st.interpret,
        name=name,
    )(*args)


def _forward(st: _Static, plan: BlockPlan, q, k, v, q_seg, kv_seg, kv_valid):
    """Padded inputs -> (out `[batch, q_pad, heads, value_dim]`, lse `[batch, heads, q_pad]`)."""
    batch, q_pad, heads, head_dim = q.shape
    k_pad, value_dim = k.shape[1], v.shape[-1]
    query_block, kv_whole, row_stat, sides = _query_grid_specs(st, k_pad, q_seg, kv_seg, kv_valid)
    plan_arrays, plan_specs = _plan_inputs(plan, by_key_block=False)
    return _call(
        st,
        _forward_kernel,
        "block_sparse_forward",
        (q_pad // st.block_q, batch, heads),
        [query_block(head_dim), kv_whole(head_dim), kv_whole(value_dim), *plan_specs, *sides],
        [query_block(value_dim), row_stat],
        [
            jax.ShapeDtypeStruct((batch, q_pad, heads, value_dim), q.dtype),
            jax.ShapeDtypeStruct((batch, heads, q_pad), jnp.float32),
        ],
        *(q, k, v, *plan_arrays, q_seg, kv_seg, kv_valid),
    )


def _backward(st: _Static, plan: BlockPlan, residuals, do):
    """dq from a grid over query blocks, dk and dv from a grid over key blocks."""
    q, k, v, q_seg, kv_seg, kv_valid, out, lse = residuals
    batch, q_pad, heads, head_dim = q.shape
    k_pad, kv_heads, value_dim = k.shape[1], k.shape[2], v.shape[-1]
    # delta_i = sum_d out_id do_id, the row term of the softmax gradient: one fused XLA reduce.
    delta = jnp.einsum("bqhd,bqhd->bhq", out.astype(jnp.float32), do.astype(jnp.float32))

    query_block, kv_whole, row_stat, sides = _query_grid_specs(st, k_pad, q_seg, kv_seg, kv_valid)
    plan_arrays, plan_specs = _plan_inputs(plan, by_key_block=False)
    dq = _call(
        st,
        _dq_kernel,
        "block_sparse_dq",
        (q_pad // st.block_q, batch, heads),
        [
            *(query_block(head_dim), kv_whole(head_dim), kv_whole(value_dim)),
            *(query_block(value_dim), row_stat, row_stat, *plan_specs, *sides),
        ],
        query_block(head_dim),
        jax.ShapeDtypeStruct(q.shape, q.dtype),
        *(q, k, v, do, lse, delta, *plan_arrays, q_seg, kv_seg, kv_valid),
    )

    query_group, key_block, group_stat, sides = _key_grid_specs(st, q_pad, q_seg, kv_seg, kv_valid)
    plan_arrays, plan_specs = _plan_inputs(plan, by_key_block=True)
    dk, dv = _call(
        st,
        _dkdv_kernel,
        "block_sparse_dkdv",
        (k_pad // st.block_k, batch, kv_heads),
        [
            *(query_group(head_dim), key_block(head_dim), key_block(value_dim)),
            *(query_group(value_dim), group_stat, group_stat, *plan_specs, *sides),
        ],
        [key_block(head_dim), key_block(value_dim)],
        [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        *(q, k, v, do, lse, delta, *plan_arrays, q_seg, kv_seg, kv_valid),
    )
    return dq, dk, dv, None, None, None


def _attend(st: _Static, plan: BlockPlan):
    """The padded-input attention with its Pallas backward, for one static config and plan."""

    @jax.custom_vjp
    def attend(q, k, v, q_seg, kv_seg, kv_valid):
        return _forward(st, plan, q, k, v, q_seg, kv_seg, kv_valid)[0]

    def forward(q, k, v, q_seg, kv_seg, kv_valid):
        out, lse = _forward(st, plan, q, k, v, q_seg, kv_seg, kv_valid)
        return out, (q, k, v, q_seg, kv_seg, kv_valid, out, lse)

    attend.defvjp(forward, functools.partial(_backward, st, plan))
    return attend


def _check_power_of_two(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 16 or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= 16 (a Triton tile), got {value!r}")


def _check_side_inputs(batch, q_len, k_len, key_mask, q_segment_ids, kv_segment_ids) -> None:
    if key_mask is not None and (key_mask.shape != (batch, k_len) or key_mask.dtype != jnp.bool_):
        raise ValueError(
            f"key_mask must be bool ({batch}, {k_len}), got {key_mask.dtype} "
            f"{tuple(key_mask.shape)}"
        )
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("q_segment_ids and kv_segment_ids must be given together")
    for name, ids, length in (
        ("q_segment_ids", q_segment_ids, q_len),
        ("kv_segment_ids", kv_segment_ids, k_len),
    ):
        if ids is not None and (
            ids.shape != (batch, length) or not jnp.issubdtype(ids.dtype, jnp.integer)
        ):
            raise ValueError(
                f"{name} must be integer ({batch}, {length}), got {ids.dtype} {tuple(ids.shape)}"
            )


def block_sparse_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    pattern: patterns.Pattern,
    *,
    causal: bool = False,
    scale: float | None = None,
    key_mask: jax.Array | None = None,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    block_q: int = 64,
    block_k: int = 64,
    interpret: bool = False,
    num_warps: int | None = None,
    num_stages: int = 2,
) -> jax.Array:
    """Softmax attention restricted to `pattern`, visiting only its kept blocks (module docstring).

    Args:
      q: `[batch, q_length, heads, head_dim]`.
      k: `[batch, k_length, kv_heads, head_dim]`, kv_heads dividing heads.
      v: `[batch, k_length, kv_heads, value_dim]`.
      pattern: a patterns.Pattern; its block plan is made on the host at trace time.
      causal: also apply the causal rule, queries aligned to the end of the keys.
      scale: a Python float multiplying q.k (it is compiled into the kernels); default
        1 / sqrt(head_dim).
      key_mask: bool `[batch, k_length]`, True for real keys.
      q_segment_ids, kv_segment_ids: int `[batch, q_length]` and `[batch, k_length]`, together:
        a query sees only keys of its own segment.
      block_q, block_k: tile sizes, powers of two >= 16.
      interpret: run the Pallas kernels in interpret mode (CPU tests).
      num_warps, num_stages: Triton launch parameters (num_warps defaults to 4 for head_dim <= 64,
        else 8).

    Returns:
      `[batch, q_length, heads, value_dim]` in q's dtype. Reverse-mode differentiable in q, k, v
      through the Pallas backward kernels (a custom VJP, so not forward-mode: no jax.jvp); jit
      and vmap compose with it.

    There is no additive bias, no full `[q, k]` mask and no dropout: a caller that needs them
    uses another kernel (sparse.py's XLA path).
    """
    if not isinstance(pattern, patterns.Pattern):
        raise ValueError(f"pattern must be a patterns.Pattern, got {pattern!r}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(f"{name} must be [batch, length, heads, dim], got {tuple(x.shape)}")
    batch, q_len, heads, head_dim = q.shape
    k_len, kv_heads = k.shape[1], k.shape[2]
    if k.shape != (batch, k_len, kv_heads, head_dim) or v.shape[:3] != k.shape[:3]:
        raise ValueError(
            f"k and v must be [batch={batch}, k_length, kv_heads, head_dim={head_dim}] and "
            f"[batch, k_length, kv_heads, value_dim], got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    if heads % kv_heads:
        raise ValueError(f"kv_heads ({kv_heads}) must divide the query heads ({heads})")
    if not (q.dtype == k.dtype == v.dtype) or not jnp.issubdtype(q.dtype, jnp.floating):
        raise ValueError(
            f"q, k, v must share one floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    _check_power_of_two("block_q", block_q)
    _check_power_of_two("block_k", block_k)
    _check_side_inputs(batch, q_len, k_len, key_mask, q_segment_ids, kv_segment_ids)

    plan = make_block_plan(pattern, q_len, k_len, block_q=block_q, block_k=block_k, causal=causal)
    n_q, n_k = plan.kept.shape
    q_pad, k_pad = n_q * block_q, n_k * block_k
    head_pad = max(16, pl.next_power_of_2(head_dim))
    value_dim = v.shape[-1]
    value_pad = max(16, pl.next_power_of_2(value_dim))
    st = _Static(
        pattern=pattern,
        q_len=q_len,
        k_len=k_len,
        block_q=block_q,
        block_k=block_k,
        causal=causal,
        scale=base.default_scale(head_dim, scale),
        group=heads // kv_heads,
        interpret=interpret,
        num_warps=num_warps or (4 if head_pad <= 64 else 8),
        num_stages=num_stages,
    )

    def pad(x, length, dim):
        return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, dim - x.shape[3])))

    def pad_row(x, length):
        return (
            None if x is None else jnp.pad(x.astype(jnp.int32), ((0, 0), (0, length - x.shape[1])))
        )

    out = _attend(st, plan)(
        pad(q, q_pad, head_pad),
        pad(k, k_pad, head_pad),
        pad(v, k_pad, value_pad),
        pad_row(q_segment_ids, q_pad),
        pad_row(kv_segment_ids, k_pad),
        pad_row(key_mask, k_pad),
    )
    return out[:, :q_len, :, :value_dim]
