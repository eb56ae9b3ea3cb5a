import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polyformer import attention as A
from polyformer.attention import patterns as P
from polyformer.attention import splash
from tests.attention.test_dense import reference

KEY = jax.random.key(0)
ATOMS_AND_COMPOSITIONS = {
    "band": P.band(100),
    "dilated": P.dilated(40, 7),
    "block_local": P.block_local(96, 3),
    "global": P.global_tokens([0, 300, -1]),
    "random": P.random_blocks(2, KEY, 160),
    "longformer": P.longformer(200, [0, 517]),
    "bigbird": P.bigbird(block=64, window=3, global_blocks=2, random_blocks=2, key=KEY),
    "band & dilated": P.band(150) & P.dilated(60, 3),
    "(band | global) & block_local": (P.band(30) | P.global_tokens([5])) & P.block_local(256, 3),
}


def qkv(seed, q_len, k_len=None, batch=2, heads=4, kv_heads=2, head_dim=64, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    k_len = k_len or q_len
    shapes = [(batch, q_len, heads, head_dim)] + [(batch, k_len, kv_heads, head_dim)] * 2
    return tuple(jnp.asarray(rng.standard_normal(s, np.float32), dtype) for s in shapes)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name", ATOMS_AND_COMPOSITIONS)
def test_splash_visits_exactly_the_blocks_the_pattern_keeps(name, causal):
    pattern, (q_len, k_len), block = ATOMS_AND_COMPOSITIONS[name], (1000, 1100), 128
    padded = (-(-q_len // block) * block, -(-k_len // block) * block)
    visited = splash.visited_blocks(
        splash.PatternMask(pattern, q_len, k_len, padded, causal), block
    )
    kept = pattern.block_mask(q_len, k_len, block)
    allowed = pattern.mask(q_len, k_len)
    if causal:
        kept &= A.base.causal_block_mask(q_len, k_len, block)
        allowed &= np.arange(k_len)[None, :] <= np.arange(q_len)[:, None] + k_len - q_len
    allowed = np.pad(allowed, [(0, padded[0] - q_len), (0, padded[1] - k_len)])
    holding_a_pair = allowed.reshape(len(kept), block, -1, block).any(axis=(1, 3))
    np.testing.assert_array_equal(visited, holding_a_pair)
    if causal or isinstance(pattern, P.Intersection):
        # An intersection's block mask (the causal rule is one) may keep a block where the parts'
        # pairs do not meet; splash skips those, and never visits a block outside it.
        assert not np.any(visited & ~kept)
    else:
        np.testing.assert_array_equal(visited, kept)


def full_reference(q, k, v, allowed):
    """The numpy reference with k/v heads repeated for grouped queries."""
    group = q.shape[2] // k.shape[2]
    k, v = (np.repeat(np.asarray(x), group, axis=2) for x in (k, v))
    return reference(q, k, v, allowed)


def allowed_mask(pattern, q_len, k_len, causal, valid, segments):
    """bool `[batch, 1, q_len, k_len]` from every rule, for the reference."""
    allowed = np.ones((q_len, k_len), bool) if pattern is None else pattern.mask(q_len, k_len)
    if causal:
        allowed &= np.arange(k_len)[None, :] <= np.arange(q_len)[:, None] + k_len - q_len
    allowed = allowed[None, None] & np.asarray(valid)[:, None, None, :]
    q_ids, k_ids = (np.asarray(s) for s in segments)
    return allowed & (q_ids[:, :, None] == k_ids[:, None, :])[:, None]


def check_forward_and_gradients(kernel, q, k, v, allowed, **kwargs):
    """Output within 1e-5 and dq/dk/dv within 1e-4 of Dense-xla with the same mask (float32)."""
    reference_kernel = A.Dense(implementation="xla")

    def run(kernel, **kw):
        def loss(q, k, v):
            out = kernel(q, k, v, **kw)
            return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape))), out

        grads, out = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
        return out, grads

    out, grads = jax.jit(lambda: run(kernel, **kwargs))()
    want, want_grads = jax.jit(lambda: run(reference_kernel, mask=jnp.asarray(allowed)))()
    np.testing.assert_allclose(out, full_reference(q, k, v, allowed), atol=1e-5)
    np.testing.assert_allclose(out, want, atol=1e-5)
    for got, expected in zip(grads, want_grads, strict=True):
        assert bool(jnp.all(jnp.isfinite(got)))
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_sparse_splash_matches_the_reference_with_padding_segments_and_grouped_heads():
    pattern = P.bigbird(block=32, window=3, global_blocks=2, random_blocks=1, key=KEY)
    q, k, v = qkv(0, 200)
    valid = jnp.ones((2, 200), bool).at[1, 170:].set(False)
    segments = jnp.asarray(np.repeat([[0, 1], [0, 0]], [90, 110], axis=1))
    allowed = allowed_mask(pattern, 200, 200, True, valid, (segments, segments))
    kernel = A.Sparse(pattern, implementation="pallas_tpu")
    check_forward_and_gradients(
        kernel, q, k, v, allowed, mask=valid, causal=True, segment_ids=segments
    )


def test_sparse_splash_decoding_alignment_and_rows_that_see_no_key():
    pattern = P.band(2) & P.global_tokens([3, 120])
    q, k, v = qkv(1, 70, 150, heads=2, kv_heads=1)
    valid = jnp.ones((2, 150), bool)
    segments = jnp.zeros((2, 70), int), jnp.zeros((2, 150), int)
    allowed = allowed_mask(pattern, 70, 150, True, valid, segments)
    assert not allowed[0, 0].any(axis=1).all()  # some queries see nothing
    kernel = A.Sparse(pattern, implementation="pallas_tpu")
    check_forward_and_gradients(kernel, q, k, v, allowed, causal=True)


def test_dense_splash_matches_the_reference_with_padding_segments_and_grouped_heads():
    q, k, v = qkv(2, 150, heads=4, kv_heads=1)
    valid = jnp.ones((2, 150), bool).at[0, :7].set(False)
    segments = jnp.asarray(np.repeat([[3, 5], [1, 1]], [60, 90], axis=1))
    allowed = allowed_mask(None, 150, 150, True, valid, (segments, segments))
    kernel = A.Dense(implementation="pallas_tpu")
    check_forward_and_gradients(
        kernel, q, k, v, allowed, mask=valid, causal=True, segment_ids=segments
    )


BFLOAT16_KERNELS = {
    "dense splash": A.Dense(implementation="pallas_tpu"),
    "sparse splash": A.Sparse(P.band(40) | P.global_tokens([0]), implementation="pallas_tpu"),
    "dense gpu flash": A.Dense(implementation="pallas_gpu"),
    "sparse gpu": A.Sparse(P.band(40) | P.global_tokens([0]), implementation="pallas_gpu"),
}


@pytest.mark.parametrize("name", BFLOAT16_KERNELS)
def test_bfloat16_in_bfloat16_out(name):
    q, k, v = qkv(3, 130, dtype=jnp.bfloat16)
    out = BFLOAT16_KERNELS[name](q, k, v, causal=True)
    assert out.dtype == jnp.bfloat16
    pattern = None if name.startswith("dense") else P.band(40) | P.global_tokens([0])
    ones = jnp.ones((2, 130), bool)
    allowed = allowed_mask(pattern, 130, 130, True, ones, (jnp.zeros((2, 130), int),) * 2)
    np.testing.assert_allclose(
        np.asarray(out, np.float32), full_reference(q, k, v, allowed), atol=2e-2
    )


@pytest.mark.parametrize("implementation", ["pallas_tpu", "pallas_gpu"])
@pytest.mark.parametrize("kernel", [A.Dense, lambda **kw: A.Sparse(P.band(4), **kw)])
def test_pallas_kernels_refuse_what_they_cannot_honour(kernel, implementation):
    q, k, v = qkv(4, 16, heads=2, kv_heads=2, head_dim=32)
    kernel = kernel(implementation=implementation, dropout_rate=0.1)
    with pytest.raises(ValueError, match="full 4-D mask"):
        kernel(q, k, v, jnp.ones((2, 1, 16, 16), bool))
    with pytest.raises(ValueError, match="dropout"):
        kernel(q, k, v, rng=jax.random.key(0))
    with pytest.raises(ValueError, match="bias"):
        kernel(q, k, v, bias=jnp.zeros((1, 2, 16, 16)))


def test_the_block_grows_with_length_so_the_grid_fits_the_tpu_s_scalar_memory():
    assert [splash.block_for(n) for n in (100, 32768, 32769, 65536, 131072, 131073)] == [
        128, 128, 256, 256, 512, 1024,
    ]  # fmt: skip
    assert splash.block_for(1000, at_least=64) == 128
    assert splash.block_for(1000, at_least=200) == 256
    assert splash.block_for(65536, at_least=1024) == 1024
