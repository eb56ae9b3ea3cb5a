import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from polyformer import attention as A

KERNELS = {
    "dense": lambda: A.Dense(),
    "band": lambda: A.Sparse(A.patterns.band(3), block=4),
    "longformer": lambda: A.Sparse(A.patterns.longformer(6, [0]), block=4),
    "favor": lambda: A.Favor(num_features=32),
}


def layer(kernel, dtype=None):
    return A.MultiHeadAttention(2, 16, kernel=kernel, dtype=dtype, rngs=nnx.Rngs(0))


# Called eagerly, a layer compiles each of its dozens of operations for every new shape; jitted,
# it compiles once per shape. The tests jit their calls and keep one eager call per kernel: the
# forward in the output_attentions test and the first piece of the piece-by-piece decode.
forward = nnx.jit(lambda attn, *args, **kwargs: attn(*args, **kwargs), static_argnames="causal")
decode = nnx.jit(lambda attn, x, cache, **kwargs: attn.decode(x, cache, **kwargs))


def test_parameter_tree_is_the_same_for_every_kernel():
    shapes = {
        name: jax.tree.map(jnp.shape, nnx.state(layer(make()), nnx.Param))
        for name, make in KERNELS.items()
    }
    first = shapes.pop("dense")
    for tree in shapes.values():
        assert tree == first


@pytest.mark.parametrize("name", KERNELS)
def test_decode_piece_by_piece_equals_one_causal_pass(name):
    attn = layer(KERNELS[name]())
    x = jax.random.normal(jax.random.key(1), (2, 10, 16))
    pad = jnp.ones((2, 10), bool).at[1, :2].set(False)
    want = forward(attn, x, mask=pad, causal=True)
    cache, outs, start = attn.init_cache(2, 16), [], 0
    for i, n in enumerate((3, 1, 1, 4, 1)):
        step = attn.decode if i == 0 else functools.partial(decode, attn)
        out, cache = step(x[:, start : start + n], cache, mask=pad[:, start : start + n])
        outs.append(out)
        start += n
    got = jnp.concatenate(outs, axis=1)
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)
    np.testing.assert_allclose(got[1, 2:], want[1, 2:], atol=1e-5)


def test_swapping_the_kernel_of_a_layer_keeps_its_weights():
    attn = layer(A.Dense())
    x = jax.random.normal(jax.random.key(2), (1, 9, 16))
    dense_out = forward(attn, x)
    attn.kernel = A.Sparse(A.patterns.band(100), block=4)  # a band wider than x: exact
    np.testing.assert_allclose(forward(attn, x), dense_out, atol=1e-5)


def test_cross_attention_and_bfloat16_propagates():
    attn = layer(A.Dense(), dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(3), (2, 5, 16))
    context = jax.random.normal(jax.random.key(4), (2, 8, 16))
    out = forward(attn, x, context)
    assert out.shape == (2, 5, 16)
    assert out.dtype == jnp.bfloat16
    params = nnx.state(attn, nnx.Param)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


def test_head_dim_must_divide_or_be_given():
    with pytest.raises(ValueError, match="num_heads=3"):
        A.MultiHeadAttention(3, 16, rngs=nnx.Rngs(0))
    attn = A.MultiHeadAttention(3, 16, head_dim=4, rngs=nnx.Rngs(0))
    assert forward(attn, jnp.ones((1, 2, 16))).shape == (1, 2, 16)


def test_layer_jits_and_differentiates():
    attn = layer(A.Dense())
    x = jax.random.normal(jax.random.key(5), (2, 6, 16))

    @nnx.jit
    def loss_and_grad(model, x):
        return nnx.value_and_grad(lambda m: jnp.mean(m(x, causal=True) ** 2))(model)

    loss, grads = loss_and_grad(attn, x)
    assert np.isfinite(loss)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_qkv_bias_drops_the_query_key_value_biases_only():
    layer = A.MultiHeadAttention(2, 8, qkv_bias=False, rngs=nnx.Rngs(0))
    biased = [n for n in ("query", "key", "value", "out") if getattr(layer, n).bias is not None]
    assert biased == ["out"]
    assert A.MultiHeadAttention(2, 8, use_bias=False, rngs=nnx.Rngs(0)).query.bias is None


@pytest.mark.parametrize("name", KERNELS)
def test_grouped_heads_and_packed_segments_decode_like_one_causal_pass(name):
    attn = A.MultiHeadAttention(4, 16, num_kv_heads=2, kernel=KERNELS[name](), rngs=nnx.Rngs(0))
    assert attn.key.kernel[...].shape == (16, 8)
    x = jax.random.normal(jax.random.key(3), (2, 10, 16))
    segments = jnp.asarray(np.repeat([[0, 1], [2, 2]], [4, 6], axis=1))
    want = forward(attn, x, causal=True, segment_ids=segments)
    cache, outs, start = attn.init_cache(2, 16), [], 0
    for n in (3, 2, 1, 4):
        part = slice(start, start + n)
        out, cache = decode(attn, x[:, part], cache, segment_ids=segments[:, part])
        outs.append(out)
        start += n
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), want, atol=1e-5)


def test_num_kv_heads_must_divide_num_heads():
    with pytest.raises(ValueError, match="num_kv_heads=3"):
        A.MultiHeadAttention(4, 16, num_kv_heads=3, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("name", KERNELS)
def test_output_attentions_returns_the_kernels_probabilities_and_the_same_output(name):
    attn = layer(KERNELS[name]())
    x = jax.random.normal(jax.random.key(5), (2, 10, 16))
    pad = jnp.ones((2, 10), bool).at[1, :2].set(False)
    run = nnx.jit(lambda m, x: m(x, mask=pad, causal=True, output_attentions=True))
    out, probs = run(attn, x)
    np.testing.assert_allclose(out, attn(x, mask=pad, causal=True), atol=1e-6)
    q, k = (proj(x).reshape(2, 10, 2, 8) for proj in (attn.query, attn.key))
    want = attn.kernel.probabilities(q, k, pad, causal=True)
    assert probs.shape == (2, 2, 10, 10)
    np.testing.assert_allclose(probs, want, atol=1e-6)
