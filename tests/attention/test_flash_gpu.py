import jax.numpy as jnp
import numpy as np
import pytest

from polyformer import attention as A
from polyformer.attention import patterns as P
from tests.attention.test_splash import KEY, allowed_mask, check_forward_and_gradients, qkv

GPU = A.Dense(implementation="pallas_gpu")


def test_causal_segments_at_a_length_off_the_block_size():
    q, k, v = qkv(0, 100, heads=2, kv_heads=2, head_dim=32)
    segments = jnp.asarray(np.repeat([[0, 1], [4, 4]], [45, 55], axis=1))
    allowed = allowed_mask(None, 100, 100, True, jnp.ones((2, 100), bool), (segments,) * 2)
    check_forward_and_gradients(GPU, q, k, v, allowed, causal=True, segment_ids=segments)


@pytest.mark.parametrize(
    "q_len, k_len, causal", [(40, 100, True), (100, 40, True), (40, 70, False)]
)
def test_cross_attention_and_decoding_alignment(q_len, k_len, causal):
    q, k, v = qkv(1, q_len, k_len, heads=2, kv_heads=2, head_dim=32)
    ones = jnp.zeros((2, q_len), int), jnp.zeros((2, k_len), int)
    allowed = allowed_mask(None, q_len, k_len, causal, jnp.ones((2, k_len), bool), ones)
    check_forward_and_gradients(GPU, q, k, v, allowed, causal=causal)


def test_what_jax_kernel_cannot_take_goes_to_the_block_sparse_kernel():
    """Grouped heads, a key-padding mask and a pair of segment-id arrays (cross attention)."""
    q, k, v = qkv(2, 50, 90, heads=4, kv_heads=2, head_dim=32)
    valid = jnp.ones((2, 90), bool).at[1, 80:].set(False)
    segments = (
        jnp.asarray(np.repeat([[0, 1], [0, 0]], [20, 30], axis=1)),
        jnp.asarray(np.repeat([[0, 1], [0, 0]], [40, 50], axis=1)),
    )
    allowed = allowed_mask(None, 50, 90, True, valid, segments)
    check_forward_and_gradients(
        GPU, q, k, v, allowed, mask=valid, causal=True, segment_ids=segments
    )


def test_sparse_on_gpu_is_our_block_sparse_kernel():
    pattern = P.bigbird(block=16, window=3, global_blocks=2, random_blocks=1, key=KEY)
    q, k, v = qkv(3, 100, heads=4, kv_heads=2, head_dim=32)
    valid = jnp.ones((2, 100), bool).at[0, 90:].set(False)
    segments = jnp.asarray(np.repeat([[0, 1], [2, 2]], [45, 55], axis=1))
    allowed = allowed_mask(pattern, 100, 100, False, valid, (segments, segments))
    kernel = A.Sparse(pattern, block=16, implementation="pallas_gpu")
    check_forward_and_gradients(kernel, q, k, v, allowed, mask=valid, segment_ids=segments)
