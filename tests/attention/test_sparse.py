import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polyformer import attention as A
from polyformer.attention import patterns as P
from polyformer.attention import sparse
from tests import codegen

KEY = jax.random.key(0)
BIGBIRD = P.bigbird(block=8, window=3, global_blocks=2, random_blocks=2, key=KEY)
LONGFORMER = P.longformer(10, [0, 20])
DILATED_GLOBAL = P.dilated(3, 2) | P.global_tokens([0, -1, 9])


def qkv(seed, q_len, k_len=None, batch=2, heads=2, head_dim=8, dtype=jnp.float32):
    """Fresh normal q, k, v (drawn with numpy: no compilation per shape)."""
    rng = np.random.default_rng(seed)
    shapes = [(batch, n, heads, head_dim) for n in (q_len, k_len or q_len, k_len or q_len)]
    return tuple(jnp.asarray(rng.standard_normal(s, np.float32), dtype) for s in shapes)


def padding(batch, k_len):
    """Key-padding mask: the second example loses its last 5 keys."""
    return jnp.asarray(np.arange(k_len)[None, :] < np.array([[k_len], [k_len - 5]])[:batch])


def output_and_grads(kernel, q, k, v, mask, causal):
    """The output and the gradient wrt q, k, v of a fixed random projection of it (one jit)."""

    def run(q, k, v):
        out, pullback = jax.vjp(lambda q, k, v: kernel(q, k, v, mask, causal), q, k, v)
        projection = jax.random.normal(jax.random.key(99), out.shape, out.dtype)
        return out, pullback(projection)

    return jax.jit(run)(q, k, v)


def full_mask(pattern, mask, q_len, k_len):
    """The pattern's reference mask and the caller's mask as one `[2, heads | 1, q, k]` mask."""
    full = np.broadcast_to(pattern.mask(q_len, k_len), (2, 1, q_len, k_len))
    if mask is not None:
        mask = np.asarray(mask)
        full = full & (mask[:, None, None, :] if mask.ndim == 2 else mask)
    return jnp.asarray(full)


CASES = {
    # name: (pattern, q_len, k_len, causal, mask kind, kernel block)
    "dilated|global causal padding": (DILATED_GLOBAL, 37, 37, True, "padding", 8),
    "bigbird padding, kernel block 16": (BIGBIRD, 130, 130, False, "padding", 16),
    "bigbird causal": (BIGBIRD, 64, 64, True, None, 8),
    "cross fewer queries causal": (P.band(4) | P.global_tokens([0]), 20, 45, True, "padding", 8),
    "cross more queries full mask": (BIGBIRD, 45, 20, False, "full", 8),
    "rows with no key": (P.band(2) & P.global_tokens([3]), 37, 37, False, None, 8),
}


def case_inputs(name):
    """q, k, v and the caller's mask (None, key padding or a full mask) of a case in CASES."""
    _, q_len, k_len, _, mask_kind, _ = CASES[name]
    q, k, v = qkv(list(CASES).index(name), q_len, k_len)
    mask = None
    if mask_kind == "padding":
        mask = padding(2, k_len)
    elif mask_kind == "full":
        mask = jnp.asarray(np.random.default_rng(5).random((2, 2, q_len, k_len)) < 0.8)
    return q, k, v, mask


@pytest.mark.parametrize("name", CASES)
def test_matches_dense_with_the_pattern_mask_forward_and_gradient(name):
    pattern, q_len, k_len, causal, _, block = CASES[name]
    q, k, v, mask = case_inputs(name)
    out, grads = output_and_grads(A.Sparse(pattern, block=block), q, k, v, mask, causal)
    reference = full_mask(pattern, mask, q_len, k_len)
    want, want_grads = output_and_grads(A.Dense(), q, k, v, reference, causal)
    np.testing.assert_allclose(out, want, atol=1e-5)
    for g, w in zip(grads, want_grads, strict=True):
        assert bool(jnp.all(jnp.isfinite(g)))
        np.testing.assert_allclose(g, w, atol=1e-5)
    empty = ~np.asarray(reference).any(axis=(1, 3))  # [batch, q_len]: rows with no key
    if name == "rows with no key":
        assert empty.sum() == 2 * 32  # only queries 1..5 see token 3
    np.testing.assert_array_equal(np.asarray(out)[empty], 0.0)


def computed_blocks(plan, shape):
    """bool `[n_q_blocks, n_k_blocks]`: the blocks a plan computes."""
    computed = np.zeros(shape, bool)
    computed[plan.dense_rows] = True
    row, slot = np.nonzero(plan.slot_valid)
    computed[plan.sparse_rows[row], plan.table[row, slot]] = True
    return computed


@pytest.mark.parametrize("causal", [False, True])
def test_the_plan_computes_every_kept_block_and_few_others(causal):
    length, block = 1000, 8
    kept = P.bigbird(8, 3, 2, 2, KEY).block_mask(length, length, block)
    if causal:
        kept &= np.tril(np.ones_like(kept))
    plan = sparse.make_plan(P.bigbird(8, 3, 2, 2, KEY), length, length, block, causal)
    computed = computed_blocks(plan, kept.shape)
    assert not (kept & ~computed).any()
    assert computed.sum() <= 1.2 * kept.sum() < 0.1 * kept.size
    assert 124 in plan.dense_rows  # the last global block's row sees every key, causal or not
    assert plan.table.shape[1] <= 7  # 3 window + 2 global + 2 random blocks
    if causal:
        assert not (computed & ~np.tril(np.ones_like(kept))).any()


def test_bfloat16_in_bfloat16_out():
    q, k, v = qkv(2, 130, dtype=jnp.bfloat16)
    # Compiled as users' programs are: the kernel's bfloat16 x bfloat16 -> float32 dots need
    # XLA:CPU's fusion emitters (tests/codegen.py).
    kernel = jax.jit(A.Sparse(BIGBIRD, block=16), compiler_options=codegen.USERS)
    out = kernel(q, k, v, padding(2, 130))
    assert out.dtype == jnp.bfloat16
    q32, k32, v32 = (x.astype(jnp.float32) for x in (q, k, v))
    want = A.Dense()(q32, k32, v32, full_mask(BIGBIRD, padding(2, 130), 130, 130))
    np.testing.assert_allclose(np.asarray(out, np.float32), want, atol=2e-2)


def test_vmap_over_an_extra_axis():
    kernel = jax.jit(lambda q, k, v: A.Sparse(LONGFORMER, block=16)(q, k, v, causal=True))
    q, k, v = (jnp.stack(pair) for pair in zip(qkv(3, 64), qkv(4, 64), strict=True))
    mapped = jax.jit(jax.vmap(kernel))(q, k, v)
    for i in range(2):
        np.testing.assert_allclose(mapped[i], kernel(q[i], k[i], v[i]), atol=1e-6)


def test_dropout_only_with_an_rng():
    q, k, v = qkv(5, 64)
    kernel = A.Sparse(BIGBIRD, block=8, dropout_rate=0.5)
    run = jax.jit(lambda q, k, v, rng: (kernel(q, k, v), kernel(q, k, v, rng=rng)))
    plain, dropped = run(q, k, v, jax.random.key(1))
    assert bool(jnp.all(jnp.isfinite(dropped))) and not np.allclose(dropped, plain)
    np.testing.assert_array_equal(dropped, run(q, k, v, jax.random.key(1))[1])


def test_no_length_squared_array_on_the_fast_path():
    length = 16384
    q = jax.ShapeDtypeStruct((1, length, 1, 16), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, length), jnp.bool_)
    # The XLA path: "auto" would also trace the TPU and GPU kernels, whose host-side block
    # plans at 16K tokens take minutes on this CPU.
    kernel = A.Sparse(P.bigbird(64, 3, 2, 3, KEY), block=64, implementation="xla")
    jaxpr = jax.make_jaxpr(lambda q, m: jax.grad(lambda q: kernel(q, q, q, m).sum())(q))(q, mask)
    assert max(_sizes(jaxpr.jaxpr)) < length * length // 64


def _sizes(jaxpr):
    """Element counts of every value a jaxpr (and the jaxprs inside it) makes."""
    for eqn in jaxpr.eqns:
        yield from (int(np.prod(var.aval.shape)) for var in eqn.outvars)
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    yield from _sizes(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    yield from _sizes(sub)


def decode_all(kernel, decode, q, k, v, valid, max_length, steps):
    """Decodes q, k, v `[batch, length, ...]` in chunks of the given sizes; concatenated outputs."""
    cache = kernel.init_cache(q.shape[0], max_length, q.shape[2], q.shape[3], q.dtype)
    outs, start = [], 0
    for n in steps:
        part = slice(start, start + n)
        out, cache = decode(cache, q[:, part], k[:, part], v[:, part], valid[:, part])
        outs.append(out)
        start += n
    return jnp.concatenate(outs, axis=1), cache


@pytest.mark.parametrize(
    "pattern, max_length, cache_type",
    [(P.band(3), 1000, sparse.RingCache), (BIGBIRD, 40, A.KVCache), (LONGFORMER, 40, A.KVCache)],
    ids=["band-ring-buffer", "bigbird-kv-cache", "longformer-kv-cache"],
)
def test_decoding_token_by_token_and_in_chunks_equals_the_causal_pass(
    pattern, max_length, cache_type
):
    """The KV-cache rule: decoding equals the causal pass over max_length tokens. Every step is
    compared, so this also checks that decoding the first n tokens gives the first n rows."""
    kernel = A.Sparse(pattern, block=8)
    q, k, v = qkv(6, 40)
    valid = jnp.asarray(np.ones((2, 40), bool) & (np.arange(40) != 4) & (np.arange(40) // 2 != 5))
    want = jax.jit(kernel, static_argnums=4)(q, k, v, valid, True)
    decode = jax.jit(kernel.decode)
    for steps in ([1] * 40, [5, 1, 8, 26]):  # 5 and 26 new tokens overflow a 4-slot ring
        out, cache = decode_all(kernel, decode, q, k, v, valid, max_length, steps)
        np.testing.assert_allclose(out, want, atol=1e-5)
    assert isinstance(cache, cache_type)
    if cache_type is sparse.RingCache:  # width + 1 slots, whatever max_length is
        assert cache.key.shape == (2, 4, 2, 8)


def test_bad_inputs_raise_and_name_the_shapes():
    q, k, v = qkv(9, 16)
    kernel = A.Sparse(P.band(2), block=8)
    with pytest.raises(ValueError, match=r"q must be \[batch, length, heads, head_dim\], got"):
        kernel(q[0], k, v)
    with pytest.raises(ValueError, match=r"mask has shape \(2, 15\)"):
        kernel(q, k, v, jnp.ones((2, 15), bool))
    with pytest.raises(ValueError, match="does not support an additive bias"):
        kernel(q, k, v, bias=jnp.zeros((1, 1, 16, 16)))
    with pytest.raises(ValueError, match="block must be an integer >= 1"):
        A.Sparse(P.band(2), block=0)
    with pytest.raises(ValueError, match="pattern must be a patterns.Pattern"):
        A.Sparse("band")
    cache = kernel.init_cache(2, 16, 2, 8, jnp.float32)
    with pytest.raises(ValueError, match="expected"):
        kernel.decode(cache, q[:, :1, :1], k[:, :1, :1], v[:, :1, :1])


@pytest.mark.parametrize("name", CASES)
def test_probabilities_are_dense_ones_under_the_pattern_mask_renormalised(name):
    pattern, q_len, k_len, causal, _, block = CASES[name]
    q, k, v, mask = case_inputs(name)
    kernel = A.Sparse(pattern, block=block)
    probs, dense, call = jax.jit(  # one compile; eagerly, each operation compiles by itself
        lambda q, k, v, mask: (
            kernel.probabilities(q, k, mask, causal),
            A.Dense().probabilities(q, k, mask, causal),
            kernel(q, k, v, mask, causal),
        )
    )(q, k, v, mask)
    dense = np.asarray(dense, np.float64)
    kept = dense * pattern.mask(q_len, k_len)
    total = kept.sum(-1, keepdims=True)
    want = np.where(total > 0, kept / np.where(total > 0, total, 1), 0.0)
    np.testing.assert_allclose(probs, want, atol=1e-5)
    out = np.einsum("bhqk,bkhd->bqhd", probs, v)
    np.testing.assert_allclose(out, call, atol=1e-5)


def test_probabilities_refuse_a_bias_as_the_call_does():
    q, k, _ = qkv(0, 16)
    with pytest.raises(ValueError, match="additive bias"):
        A.Sparse(LONGFORMER).probabilities(q, k, bias=jnp.zeros((1, 1, 16, 16)))
