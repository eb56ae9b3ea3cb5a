"""Dense attention on GPUs: JAX's Pallas flash attention (`jax.experimental.pallas.ops.gpu.
attention.mha`, Triton) behind the kernel contract of base.py.

That kernel takes equal query and key lengths in whole blocks, causal masking aligned to the start,
and one segment-id array shared by queries and keys. The wrapper places queries and keys in one
padded frame: end-aligned causal attention (base.causal_allowed) puts the shorter of the two at the
end of the frame; frame positions that hold no real key get an odd segment id (the caller's ids
are doubled), so no real query sees them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.gpu import attention as pallas_mha

from polyformer.attention import pallas_gpu_sparse


def unsupported(q, k, mask, causal: bool, segment_ids) -> str | None:
    """Why this kernel cannot run the call, or None."""
    if mask is not None:
        return (
            "cannot take a key-padding mask: JAX's GPU flash attention has one segment-id array "
            "for queries and keys (a padded key's id would also be its query's); pass "
            "segment_ids, or use implementation='xla'"
        )
    if isinstance(segment_ids, tuple | list):
        return "takes one segment_ids array `[batch, length]` for queries and keys, not a pair"
    if k.shape[2] != q.shape[2]:
        return (
            "has no grouped-query heads (JAX's GPU flash attention maps query head h to key "
            "head h); use implementation='xla'"
        )
    if not causal and q.shape[1] > k.shape[1]:
        return "needs q_length <= k_length without causal masking"
    return None


def frame_length(length: int) -> int:
    """The padded frame: whole 128-row blocks, or 32-row blocks for short sequences."""
    step = 128 if length > 128 else 32
    return -(-length // step) * step


# jit: every layer of a model calls this with the same shapes, and tracing a Pallas kernel is
# slow; the cache traces it once.
@functools.partial(jax.jit, static_argnames=("causal", "scale", "interpret"))
def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool,
    segments: tuple[jax.Array, jax.Array] | None,
    scale: float,
    interpret: bool,
) -> jax.Array:
    """q `[batch, q_length, heads, head_dim]`, k/v `[batch, k_length, heads, head_dim]` (see
    `unsupported` for what else is accepted); returns `[batch, q_length, heads, head_dim]`."""
    batch, q_len, _, _ = q.shape
    k_len = k.shape[1]
    front_q = k_len - q_len if causal and k_len > q_len else 0
    front_k = q_len - k_len if causal and q_len > k_len else 0
    length = frame_length(max(q_len + front_q, k_len + front_k))

    def place(x, front):
        back = length - front - x.shape[1]
        return jnp.pad(x, ((0, 0), (front, back), (0, 0), (0, 0)))

    positions = np.arange(length)
    real_key = (positions >= front_k) & (positions < front_k + k_len)
    if segments is not None:
        ids = jnp.pad(2 * segments[1].astype(jnp.int32), ((0, 0), (0, length - k_len)))
        ids = jnp.where(real_key, ids, 1)
    elif not real_key.all():
        ids = jnp.broadcast_to(jnp.asarray(np.where(real_key, 0, 1), jnp.int32), (batch, length))
    else:
        ids = None
    block = min(128, length)
    sizes = pallas_mha.BlockSizes(
        block_q=block, block_k=block, block_q_dkv=32, block_kv_dkv=32, block_q_dq=32, block_kv_dq=32
    )
    out = pallas_mha.mha(
        place(q, front_q),
        place(k, front_k),
        place(v, front_k),
        ids,
        sm_scale=scale,
        causal=causal,
        block_sizes=sizes,
        interpret=interpret,
    )
    out = out[:, front_q : front_q + q_len]
    if front_k:  # queries before the first key see nothing: 0, as the contract says
        out = jnp.where((np.arange(q_len) >= front_k)[None, :, None, None], out, 0)
    return out


def block_sparse(
    q, k, v, pattern, *, causal, key_mask, segments, scale, block: int, interpret: bool
) -> jax.Array:
    """Our block-sparse GPU kernel (pallas_gpu_sparse.py) through `pattern`, with tiles of `block`
    rounded down to a power of two in [16, 128] (Triton's tiles); it takes everything `attention`
    cannot: grouped heads, a key-padding mask, a pair of segment-id arrays."""
    tile = min(128, max(16, 1 << (block.bit_length() - 1)))
    q_ids, kv_ids = (None, None) if segments is None else segments
    return pallas_gpu_sparse.block_sparse_attention(
        q,
        k,
        v,
        pattern,
        causal=causal,
        scale=scale,
        key_mask=key_mask,
        q_segment_ids=q_ids,
        kv_segment_ids=kv_ids,
        block_q=tile,
        block_k=tile,
        interpret=interpret,
    )
