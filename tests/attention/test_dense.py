import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polyformer import attention as A


def qkv(seed, batch=2, q_len=7, k_len=None, heads=3, head_dim=8, dtype=jnp.float32):
    k_len = q_len if k_len is None else k_len
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.normal(kq, (batch, q_len, heads, head_dim), dtype),
        jax.random.normal(kk, (batch, k_len, heads, head_dim), dtype),
        jax.random.normal(kv, (batch, k_len, heads, head_dim), dtype),
    )


def reference(q, k, v, allowed=None, bias=None, scale=None):
    """softmax(q k^T * scale + bias) v in float64 numpy, written out from the formula."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    s = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if bias is not None:
        s = s + np.asarray(bias, np.float64)
    if allowed is None:
        allowed = np.ones_like(s, bool)
    allowed = np.broadcast_to(np.asarray(allowed), s.shape)
    s = np.where(allowed, s, -np.inf)
    m = np.max(s, -1, keepdims=True)
    p = np.where(allowed, np.exp(s - np.where(np.isfinite(m), m, 0)), 0)
    p = p / np.maximum(p.sum(-1, keepdims=True), 1e-300)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


def test_matches_formula_with_padding_causal_bias_and_scale():
    q, k, v = qkv(0)
    pad = jnp.array([[True] * 7, [False, False] + [True] * 5])
    bias = jax.random.normal(jax.random.key(1), (1, 3, 7, 7))
    out = A.Dense()(q, k, v, pad, causal=True, bias=bias, scale=0.3)
    causal = np.tril(np.ones((7, 7), bool))
    want = reference(q, k, v, np.asarray(pad)[:, None, None, :] & causal, bias, 0.3)
    np.testing.assert_allclose(out, want, atol=1e-5)


def test_cross_attention_and_full_mask():
    q, k, v = qkv(2, q_len=5, k_len=11)
    full = jax.random.bernoulli(jax.random.key(3), 0.7, (2, 1, 5, 11))
    np.testing.assert_allclose(A.Dense()(q, k, v, full), reference(q, k, v, full), atol=1e-5)


def test_causal_cross_attention_aligns_queries_to_the_end_of_the_keys():
    q, k, v = qkv(4, q_len=3, k_len=6)
    allowed = np.arange(6)[None, :] <= np.arange(3)[:, None] + 3
    np.testing.assert_allclose(
        A.Dense()(q, k, v, causal=True), reference(q, k, v, allowed), atol=1e-5
    )


def test_query_with_no_key_gives_zero_and_finite_gradient():
    q, k, v = qkv(5)
    mask = jnp.zeros((2, 1, 7, 7), bool).at[:, :, 1:].set(True)

    def loss(q, k, v):
        return jnp.sum(A.Dense()(q, k, v, mask) ** 2)

    np.testing.assert_array_equal(A.Dense()(q, k, v, mask)[:, 0], 0.0)
    grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


def test_bfloat16_in_bfloat16_out_with_float32_statistics():
    q, k, v = qkv(6, q_len=64, dtype=jnp.bfloat16)
    out = A.Dense()(q, k, v, causal=True)
    assert out.dtype == jnp.bfloat16
    want = reference(q, k, v, np.tril(np.ones((64, 64), bool)))
    np.testing.assert_allclose(np.asarray(out, np.float32), want, atol=2e-2)


def test_dropout_only_with_rng_and_unbiased():
    q, k, v = qkv(7, batch=1, q_len=4, heads=1, head_dim=2)
    kernel = A.Dense(dropout_rate=0.5)
    np.testing.assert_allclose(kernel(q, k, v), A.Dense()(q, k, v))
    draws = jax.vmap(lambda r: kernel(q, k, v, rng=r))(jax.random.split(jax.random.key(0), 4000))
    assert not np.allclose(draws[0], draws[1])
    np.testing.assert_allclose(draws.mean(0), A.Dense()(q, k, v), atol=0.1)
    with pytest.raises(ValueError, match="dropout_rate"):
        A.Dense(dropout_rate=1.0)


def test_jit_grad_vmap():
    q, k, v = qkv(8)
    kernel = A.Dense()
    f = jax.jit(lambda q, k, v: kernel(q, k, v, causal=True))
    np.testing.assert_allclose(f(q, k, v), kernel(q, k, v, causal=True), atol=1e-6)
    batched = jax.vmap(lambda q, k, v: kernel(q[None], k[None], v[None])[0])(q, k, v)
    np.testing.assert_allclose(batched, kernel(q, k, v), atol=1e-6)

    def loss(q):
        return jnp.sum(jnp.sin(kernel(q, k, v, causal=True)))

    # the gradient against central finite differences along a random direction
    eps, direction = 1e-3, jax.random.normal(jax.random.key(9), q.shape)
    numeric = (loss(q + eps * direction) - loss(q - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(jnp.vdot(jax.grad(loss)(q), direction), numeric, rtol=1e-2)


@pytest.mark.parametrize(
    "shapes, mask_shape, message",
    [
        (((2, 5, 3, 8), (2, 5, 4, 8), (2, 5, 4, 8)), None, "heads=3"),
        (((2, 5, 3, 8), (2, 5, 3, 8), (2, 6, 3, 8)), None, "expected"),
        (((2, 5, 3), (2, 5, 3), (2, 5, 3)), None, "batch, length, heads, head_dim"),
        (((2, 5, 3, 8), (2, 5, 3, 8), (2, 5, 3, 8)), (2, 4), "key-padding mask"),
        (((2, 5, 3, 8), (2, 5, 3, 8), (2, 5, 3, 8)), (2, 2, 5, 5), "full mask"),
    ],
)
def test_bad_shapes_raise_naming_the_shapes(shapes, mask_shape, message):
    q, k, v = (jnp.zeros(s) for s in shapes)
    mask = None if mask_shape is None else jnp.ones(mask_shape, bool)
    with pytest.raises(ValueError, match=message):
        A.Dense()(q, k, v, mask)


def test_mismatched_dtypes_and_float_masks_raise():
    q, k, v = qkv(10)
    with pytest.raises(ValueError, match="dtype"):
        A.Dense()(q, k.astype(jnp.bfloat16), v)
    with pytest.raises(ValueError, match="boolean"):
        A.Dense()(q, k, v, jnp.ones((2, 7)))


@pytest.mark.parametrize("chunks", [[1] * 9, [4, 1, 3, 1]])
def test_decode_equals_one_causal_pass(chunks):
    q, k, v = qkv(11, q_len=9)
    pad = jnp.array([[True] * 9, [False, False, False] + [True] * 6])
    kernel = A.Dense()
    want = kernel(q, k, v, pad, causal=True)
    cache, outs, start = kernel.init_cache(2, 12, 3, 8, jnp.float32), [], 0
    for n in chunks:
        sl = slice(start, start + n)
        out, cache = kernel.decode(cache, q[:, sl], k[:, sl], v[:, sl], pad[:, sl])
        outs.append(out)
        start += n
    got = jnp.concatenate(outs, axis=1)
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)
    np.testing.assert_allclose(got[1, 3:], want[1, 3:], atol=1e-5)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
def test_cudnn_matches_xla_on_gpu():
    q, k, v = qkv(12, q_len=128, heads=4, head_dim=64, dtype=jnp.bfloat16)
    pad = jnp.ones((2, 128), bool).at[1, :20].set(False)
    for causal in (False, True):
        want = A.Dense()(q, k, v, pad, causal=causal).astype(jnp.float32)
        got = A.Dense(implementation="cudnn")(q, k, v, pad, causal=causal).astype(jnp.float32)
        np.testing.assert_allclose(got[0], want[0], atol=2e-2)


def reference_probabilities(q, k, allowed, bias=None, scale=None):
    """The weights of `reference`, float64 `[batch, heads, q, k]`: its output for v = identity."""
    eye = np.broadcast_to(np.eye(k.shape[1])[None, :, None, :], (*k.shape[:3], k.shape[1]))
    return reference(q, k, eye, allowed, bias, scale).transpose(0, 2, 1, 3)


def test_probabilities_match_the_formula_and_weigh_the_values_as_the_call():
    q, k, v = qkv(6)
    pad = jnp.array([[True] * 7, [False, False] + [True] * 5])
    bias = jax.random.normal(jax.random.key(7), (1, 3, 7, 7))
    args = dict(causal=True, bias=bias, scale=0.3)
    probs = A.Dense().probabilities(q, k, pad, **args)
    assert probs.shape == (2, 3, 7, 7) and probs.dtype == jnp.float32
    allowed = np.asarray(pad)[:, None, None, :] & np.tril(np.ones((7, 7), bool))
    np.testing.assert_allclose(probs, reference_probabilities(q, k, allowed, bias, 0.3), atol=1e-6)
    assert not np.asarray(probs)[1, :, :2].any()  # queries that see no key: all zero
    out = np.einsum("bhqk,bkhd->bqhd", probs, v)
    np.testing.assert_allclose(out, A.Dense()(q, k, v, pad, **args), atol=1e-5)


def test_probabilities_of_grouped_heads_and_packed_segments():
    q, _, _ = qkv(8, heads=4)
    _, k, v = qkv(9, heads=2)
    segments = jnp.array([[0, 0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 2, 2, 2]])
    probs = A.Dense().probabilities(q, k, causal=True, segment_ids=segments)
    same = np.asarray(segments)[:, :, None] == np.asarray(segments)[:, None, :]
    allowed = (same & np.tril(np.ones((7, 7), bool)))[:, None]
    want = reference_probabilities(q, np.repeat(k, 2, axis=2), allowed)
    np.testing.assert_allclose(probs, want, atol=1e-6)
    out = np.einsum("bhqk,bkhd->bqhd", probs, np.repeat(v, 2, axis=2))
    np.testing.assert_allclose(
        out, A.Dense()(q, k, v, causal=True, segment_ids=segments), atol=1e-5
    )
