import functools

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polyformer import attention as A
from polyformer.attention import base, favor


def qkv(seed, batch=2, q_len=13, k_len=None, heads=2, head_dim=8, dtype=jnp.float32, size=1.0):
    # numpy, not jax.random: every new jax.random shape costs seconds of compilation on CPU.
    k_len = q_len if k_len is None else k_len
    rng = np.random.default_rng(seed)
    q = size * rng.standard_normal((batch, q_len, heads, head_dim))
    k = size * rng.standard_normal((batch, k_len, heads, head_dim))
    v = rng.standard_normal((batch, k_len, heads, head_dim))
    return tuple(jnp.asarray(x, jnp.float32).astype(dtype) for x in (q, k, v))


def reference(kernel, q, k, v, allowed=None, scale=None):
    """Normalised linear attention with the kernel's features, written out in O(q_len k_len m).

    Weights are phi(q_i).phi(k_j) over the allowed keys, normalised per query, with q and k
    scaled by sqrt(scale), phi(q) = exp(w.q - max w.q) + eps and
    phi(k) = exp(max w.k - |k|^2 / 2) * (exp(w.k - max w.k) + eps). The weights are formed in log
    space (logsumexp over the features) and normalised by a masked softmax, so no shift or running
    state is involved.
    """
    head_dim = q.shape[-1]
    root = np.sqrt(base.default_scale(head_dim, scale))
    w = kernel.projection(head_dim)
    qx, kx = q.astype(jnp.float32) * root, k.astype(jnp.float32) * root
    pq = jnp.einsum("bihd,rd->bhir", qx, w)
    pk = jnp.einsum("bjhd,rd->bhjr", kx, w)
    log_q = jnp.log(jnp.exp(pq - pq.max(-1, keepdims=True)) + kernel.eps)
    k_max = pk.max(-1, keepdims=True)
    log_k = jnp.log(jnp.exp(pk - k_max) + kernel.eps) + k_max
    log_k = log_k - 0.5 * jnp.sum(kx * kx, -1).transpose(0, 2, 1)[..., None]
    logits = jax.nn.logsumexp(log_q[:, :, :, None, :] + log_k[:, :, None, :, :], axis=-1)
    weights = base.masked_softmax(logits, allowed)
    return jnp.einsum("bhij,bjhd->bihd", weights, v.astype(jnp.float32))


def causal_mask(q_len, k_len, pad=None):
    allowed = base.causal_allowed(
        np.arange(q_len)[:, None], np.arange(k_len)[None, :], q_len, k_len
    )
    allowed = jnp.asarray(allowed)[None, None]
    return allowed if pad is None else allowed & pad[:, None, None, :]


@functools.partial(jax.jit, static_argnums=0)
def forward_and_grads(fn, q, k, v):
    """fn(q, k, v) and the gradients of a fixed projection of it with respect to q, k, v (jitted:
    one compilation instead of hundreds of eager ones)."""
    out, vjp = jax.vjp(fn, q, k, v)
    cotangent = jnp.cos(jnp.arange(out.size, dtype=jnp.float32)).reshape(out.shape)
    return out, vjp(cotangent)


def assert_close(got, want, tol):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol)


def assert_finite(tree):
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(tree))


SEEDS = 8


@functools.cache
def seeded_inputs():
    """SEEDS sets of q, k, v `[SEEDS, 1, 64, 2, 16]`, exact attention on them, and SEEDS keys."""
    q, k, v = (
        jnp.stack(x)
        for x in zip(*(qkv(s, 1, 64, head_dim=16, size=0.5) for s in range(SEEDS)), strict=True)
    )
    return (
        (q, k, v),
        jax.jit(jax.vmap(A.Dense()))(q, k, v),
        jax.random.split(jax.random.key(0), SEEDS),
    )


@functools.partial(jax.jit, static_argnums=(0, 1))
def favor_errors(num_features, orthogonal, keys, q, k, v, want):
    """Relative L2 error against exact attention, one per (key, inputs) pair `[SEEDS]`."""

    def run(key, q, k, v):
        return A.Favor(num_features, key=key, orthogonal=orthogonal)(q, k, v)

    err = jax.vmap(run)(keys, q, k, v) - want
    return jnp.linalg.norm(err.reshape(SEEDS, -1), axis=1) / jnp.linalg.norm(
        want.reshape(SEEDS, -1), axis=1
    )


def mean_error(num_features, orthogonal=True):
    inputs, want, keys = seeded_inputs()
    return float(jnp.mean(favor_errors(num_features, orthogonal, keys, *inputs, want)))


def test_error_against_softmax_falls_with_more_features():
    errors = [mean_error(m) for m in (16, 64, 256)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < errors[0] / 2, errors


def test_orthogonal_features_beat_iid():
    assert mean_error(64, orthogonal=True) < mean_error(64, orthogonal=False)


def test_orthogonal_projection_has_orthogonal_blocks_of_gaussian_norms():
    w = np.asarray(A.Favor(40).projection(16))
    assert w.shape == (40, 16)
    unit = w / np.linalg.norm(w, axis=1, keepdims=True)
    for block in (unit[:16], unit[16:32], unit[32:]):
        np.testing.assert_allclose(block @ block.T, np.eye(len(block)), atol=1e-5)
    assert not np.allclose(np.linalg.norm(w, axis=1), 4.0)


@pytest.mark.parametrize("q_len,k_len", [(29, 29), (5, 29), (29, 13)])
def test_causal_equals_exact_computation_with_the_same_features(q_len, k_len):
    q, k, v = qkv(1, q_len=q_len, k_len=k_len)
    pad = jnp.ones((2, k_len), bool).at[1, :3].set(False).at[0, k_len // 2].set(False)
    kernel = A.Favor(16, chunk=8)
    allowed = causal_mask(q_len, k_len, pad)
    fast = forward_and_grads(lambda *x: kernel(*x, pad, causal=True), q, k, v)
    slow = forward_and_grads(lambda *x: reference(kernel, *x, allowed), q, k, v)
    assert_close(fast[0], slow[0], 1e-5)
    assert_close(fast[1], slow[1], 1e-4)


def test_bidirectional_with_padding_equals_exact_computation():
    q, k, v = qkv(2, q_len=6, k_len=17)
    pad = jnp.ones((2, 17), bool).at[0, -4:].set(False).at[1, 2].set(False)
    kernel = A.Favor(16)
    fast = forward_and_grads(lambda *x: kernel(*x, pad, scale=0.2), q, k, v)
    slow = forward_and_grads(lambda *x: reference(kernel, *x, pad[:, None, None, :], 0.2), q, k, v)
    assert_close(fast[0], slow[0], 1e-5)
    assert_close(fast[1], slow[1], 1e-4)


def test_large_norms_stay_finite_and_exact():
    q, k, v = qkv(3, q_len=20, size=30.0)
    kernel = A.Favor(16, chunk=8)

    def both(q, k, v):
        return kernel(q, k, v), kernel(q, k, v, causal=True)

    out, d = forward_and_grads(lambda *x: jnp.stack(both(*x)), q, k, v)
    want = jax.jit(lambda *x: (reference(kernel, *x), reference(kernel, *x, causal_mask(20, 20))))
    assert_close(tuple(out), want(q, k, v), 1e-4)
    assert_finite(d)


def test_bfloat16_inputs_keep_float32_statistics():
    q, k, v = qkv(4, q_len=40, dtype=jnp.bfloat16)
    kernel = A.Favor(16, chunk=16)
    both = jax.jit(lambda *x: (kernel(*x), kernel(*x, causal=True)))
    out = both(q, k, v)
    assert all(o.dtype == jnp.bfloat16 for o in out)
    want = both(*(x.astype(jnp.float32) for x in (q, k, v)))
    assert_close(jax.tree.map(lambda o: o.astype(jnp.float32), out), want, 2e-2)


def test_causal_output_does_not_depend_on_later_inputs():
    q, k, v = qkv(5, batch=1, q_len=20, heads=1)
    kernel = A.Favor(16, chunk=8)
    jacobians = jax.jit(jax.jacrev(lambda *x: kernel(*x, causal=True), argnums=(0, 1, 2)))(q, k, v)
    later = np.arange(20)[None, :] > np.arange(20)[:, None]  # [t, s]: s after t
    for name, jac in zip("qkv", jacobians, strict=True):
        per_position = np.abs(np.asarray(jac)[0, :, 0, :, 0, :, 0, :]).sum(axis=(1, 3))  # [t, s]
        assert np.all(per_position[later] == 0.0), name
        # Keys and values do reach every output at or after their position.
        assert name == "q" or np.all(per_position[~later] > 0.0), name


def test_query_that_sees_no_key_gives_zero_and_finite_gradient():
    q, k, v = qkv(6, q_len=12, k_len=9)
    pad = jnp.ones((2, 9), bool).at[1].set(False)
    kernel = A.Favor(16, chunk=4)

    def both(q, k, v):
        return jnp.stack([kernel(q, k, v, pad), kernel(q, k, v, pad, causal=True)])

    out, d = forward_and_grads(both, q, k, v)
    np.testing.assert_array_equal(out[:, 1], 0.0)
    # Causal with more queries than keys: the first three queries see no key.
    np.testing.assert_array_equal(out[1, :, :3], 0.0)
    assert_finite(d)


def test_decode_token_by_token_and_in_chunks_equals_one_causal_pass():
    q, k, v = qkv(7, q_len=14)
    pad = jnp.ones((2, 14), bool).at[0, 2].set(False).at[1, 9].set(False)
    kernel = A.Favor(16, chunk=4)
    want = jax.jit(lambda *x: kernel(*x, pad, causal=True))(q, k, v)
    decode = jax.jit(kernel.decode)
    for step in (1, 7):
        cache = kernel.init_cache(2, 64, 2, 8, jnp.float32)
        outs = []
        for s in range(0, 14, step):
            part = slice(s, s + step)
            out, cache = decode(cache, q[:, part], k[:, part], v[:, part], pad[:, part])
            outs.append(out)
        np.testing.assert_allclose(jnp.concatenate(outs, axis=1), want, atol=1e-5)
        assert int(cache.index) == 14
    assert cache.kv.shape == (2, 2, 16, 8)


def test_cache_does_not_grow_with_max_length():
    kernel = A.Favor(16)
    small, large = (kernel.init_cache(1, n, 2, 8, jnp.bfloat16) for n in (16, 1 << 20))
    assert jax.tree.map(jnp.shape, small) == jax.tree.map(jnp.shape, large)


def test_features_follow_the_key_and_the_redraw_policy():
    rng1, rng2 = jax.random.key(11), jax.random.key(12)
    fixed = A.Favor(16, key=jax.random.key(3)).projection(8)
    np.testing.assert_array_equal(A.Favor(16, key=jax.random.key(3)).projection(8), fixed)
    np.testing.assert_array_equal(A.Favor(16, key=3).projection(8), fixed)
    assert not np.allclose(A.Favor(16, key=jax.random.key(4)).projection(8), fixed)
    # Without redraw the rng is not used.
    np.testing.assert_array_equal(A.Favor(16, key=jax.random.key(3)).projection(8, rng1), fixed)

    redraw = A.Favor(16, key=jax.random.key(3), redraw=True)
    np.testing.assert_array_equal(redraw.projection(8), fixed)
    fresh = redraw.projection(8, rng1)
    assert not np.allclose(fresh, fixed)
    np.testing.assert_array_equal(redraw.projection(8, rng1), fresh)
    assert not np.allclose(redraw.projection(8, rng2), fresh)

    # A call uses the rng's features, also when the rng is traced under jit.
    q, k, v = qkv(8)
    with_rng = jax.jit(lambda rng: redraw(q, k, v, rng=rng))(rng1)
    np.testing.assert_allclose(with_rng, A.Favor(16, key=rng1)(q, k, v), atol=1e-6)
    assert not np.allclose(with_rng, A.Favor(16, key=jax.random.key(3))(q, k, v))


def test_kernel_is_a_hashable_static_value():
    assert A.Favor(key=5) == A.Favor(key=5) and hash(A.Favor(key=5)) == hash(A.Favor(key=5))
    assert A.Favor(key=jax.random.key(5)) == A.Favor(key=jax.random.key(5))
    assert hash(A.Favor(key=jax.random.key(5))) == hash(A.Favor(key=jax.random.key(5)))
    assert A.Favor(key=jax.random.key(5)) != A.Favor(key=jax.random.key(6))
    assert A.Favor(chunk=64) != A.Favor(chunk=32)

    class Layer(nnx.Module):
        def __init__(self, kernel):
            self.kernel = kernel
            self.scale = nnx.Param(jnp.ones(()))

        def __call__(self, q, k, v):
            return self.kernel(q * self.scale, k, v, causal=True)

    q, k, v = qkv(9)
    kernel = A.Favor(16, key=jax.random.key(1), chunk=4)
    out = nnx.jit(lambda layer, *x: layer(*x))(Layer(kernel), q, k, v)
    want = jax.jit(lambda *x: kernel(*x, causal=True))(q, k, v)
    np.testing.assert_allclose(out, want, atol=1e-6)


def test_vmap_agrees_with_direct_calls():
    q, k, v = qkv(10)
    causal = jax.jit(functools.partial(A.Favor(16, chunk=4), causal=True))
    stacked = [jnp.stack([x, 2 * x]) for x in (q, k, v)]
    batched = jax.jit(jax.vmap(causal))(*stacked)
    np.testing.assert_allclose(batched[0], causal(q, k, v), atol=1e-6)
    np.testing.assert_allclose(batched[1], causal(2 * q, 2 * k, 2 * v), atol=1e-6)


def test_unsupported_arguments_and_bad_shapes_raise():
    q, k, v = qkv(11)
    kernel = A.Favor(16)
    with pytest.raises(ValueError, match="bias"):
        kernel(q, k, v, bias=jnp.zeros((1, 2, 13, 13)))
    with pytest.raises(ValueError, match="full"):
        kernel(q, k, v, jnp.ones((2, 1, 13, 13), bool))
    with pytest.raises(ValueError, match="k has shape"):
        kernel(q, k[..., :4], v)
    with pytest.raises(ValueError, match="must be"):
        kernel(q[0], k, v)
    with pytest.raises(ValueError, match="positive scale"):
        kernel(q, k, v, scale=-1.0)
    with pytest.raises(ValueError, match="features"):
        kernel.decode(A.Favor(8).init_cache(2, 16, 2, 8, jnp.float32), q, k, v)
    with pytest.raises(ValueError, match="as many new keys"):
        kernel.decode(kernel.init_cache(2, 16, 2, 8, jnp.float32), q, k[:, :3], v[:, :3])
    for bad in ({"num_features": 0}, {"chunk": 0}, {"eps": 0.0}, {"key": "seed"}):
        with pytest.raises(ValueError):
            A.Favor(**bad)


def probabilities_times_v(kernel, q, k, v, *args, **kwargs):
    """The kernel's probabilities times v (query heads grouped onto their key/value heads)."""
    probs = kernel.probabilities(q, k, *args, **kwargs)
    group = q.shape[2] // k.shape[2]
    return probs, jnp.einsum("bhqk,bkhd->bqhd", probs, jnp.repeat(v, group, axis=2))


@pytest.mark.parametrize(
    "q_len,k_len,causal,segmented",
    [(29, 29, True, False), (5, 29, True, False), (6, 17, False, False), (24, 24, False, True)],
)
def test_probabilities_times_v_equal_the_output(q_len, k_len, causal, segmented):
    q, _, _ = qkv(12, q_len=q_len, heads=4)
    _, k, v = qkv(13, q_len=q_len, k_len=k_len)
    pad = jnp.ones((2, k_len), bool).at[1, :3].set(False).at[0, k_len // 2].set(False)
    segments = None
    if segmented:
        segments = jnp.asarray(np.repeat([[0, 1, 2], [0, 0, 1]], [8, 8, 8], axis=1))
    kernel = A.Favor(16, chunk=8)
    args = dict(causal=causal, scale=0.2, segment_ids=segments)
    probs, out = probabilities_times_v(kernel, q, k, v, pad, **args)
    assert probs.shape == (2, 4, q_len, k_len)
    assert_close(out, kernel(q, k, v, pad, **args), 1e-5)
    allowed = base.allowed_pairs(
        pad, causal, base.split_segments(segments, 2, q_len, k_len), q_len, k_len
    )
    seen = np.broadcast_to(np.asarray(allowed), probs.shape).any(-1)
    np.testing.assert_allclose(np.asarray(probs).sum(-1), seen.astype(np.float32), atol=1e-5)
    assert not np.asarray(probs)[~np.broadcast_to(np.asarray(allowed), probs.shape)].any()


def test_probabilities_of_large_norms_stay_finite_and_weigh_like_the_call():
    q, k, v = qkv(3, q_len=20, size=30.0)
    kernel = A.Favor(16)
    probs, out = probabilities_times_v(kernel, q, k, v, causal=True)
    assert bool(jnp.all(jnp.isfinite(probs)))
    assert_close(out, kernel(q, k, v, causal=True), 1e-5)


def test_probabilities_refuse_a_matrix_past_the_limit_and_what_the_call_refuses():
    kernel = A.Favor(16)
    length = int(np.sqrt(favor.MAX_PROBABILITIES)) + 1
    big = jax.ShapeDtypeStruct((1, length, 1, 8), jnp.float32)
    with pytest.raises(ValueError, match="MAX_PROBABILITIES"):
        jax.eval_shape(kernel.probabilities, big, big)
    q, k, _ = qkv(11)
    with pytest.raises(ValueError, match="bias"):
        kernel.probabilities(q, k, bias=jnp.zeros((1, 2, 13, 13)))
    with pytest.raises(ValueError, match="full"):
        kernel.probabilities(q, k, jnp.ones((2, 1, 13, 13), bool))
