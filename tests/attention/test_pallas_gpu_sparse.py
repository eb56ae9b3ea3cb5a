import importlib.util
import os
import subprocess
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polyformer.attention import base
from polyformer.attention import patterns as P
from polyformer.attention.pallas_gpu_sparse import (
    block_sparse_attention,
    kept_blocks,
    make_block_plan,
)

KEY = jax.random.key(0)


def qkv(
    seed, q_len, k_len, heads=2, kv_heads=2, head_dim=32, value_dim=32, batch=2, dtype=jnp.float32
):
    rng = np.random.default_rng(seed)
    shapes = [
        (batch, q_len, heads, head_dim),
        (batch, k_len, kv_heads, head_dim),
        (batch, k_len, kv_heads, value_dim),
    ]
    return tuple(jnp.asarray(rng.standard_normal(s, np.float32), dtype) for s in shapes)


def reference_mask(pattern, q_len, k_len, causal, key_mask, q_seg, kv_seg):
    """bool `[batch, 1, q_len, k_len]` from pattern.mask and the other rules, in numpy."""
    allowed = pattern.mask(q_len, k_len)
    if causal:
        allowed &= base.causal_allowed(np.arange(q_len)[:, None], np.arange(k_len), q_len, k_len)
    allowed = np.broadcast_to(allowed, (2, 1, q_len, k_len))
    if key_mask is not None:
        allowed = allowed & np.asarray(key_mask)[:, None, None, :]
    if q_seg is not None:
        allowed = allowed & (
            np.asarray(q_seg)[:, None, :, None] == np.asarray(kv_seg)[:, None, None, :]
        )
    return jnp.asarray(allowed)


def reference(q, k, v, allowed):
    """Dense masked attention, k and v heads repeated for grouped queries."""
    group = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision="highest") / np.sqrt(q.shape[-1])
    weights = base.masked_softmax(scores, allowed)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v, precision="highest").astype(q.dtype)


def run_unoptimised(fn, *args):
    """fn(*args) jitted; interpret-mode kernels are XLA loops whose optimisation costs more
    compile time than it saves at these sizes."""
    return jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": 0})(*args)


def output_and_grads(fn, q, k, v):
    def run(q, k, v):
        out, pullback = jax.vjp(fn, q, k, v)
        cotangent = jax.random.normal(jax.random.key(7), out.shape, out.dtype)
        return out, pullback(cotangent)

    return run_unoptimised(run, q, k, v)


def key_padding(k_len):
    """The second example loses its last 7 keys."""
    return jnp.asarray(np.arange(k_len)[None, :] < np.array([[k_len], [k_len - 7]]))


def segments(length, cut):
    """Two sequences packed in a row: positions before `cut` are segment 0, the rest 1 (the
    second example is one sequence)."""
    return jnp.asarray(np.stack([np.arange(length) >= cut, np.zeros(length, bool)]), jnp.int32)


class Case(NamedTuple):
    pattern: P.Pattern
    q_len: int
    k_len: int
    causal: bool = False
    heads: int = 2
    kv_heads: int = 2
    block_q: int = 16
    block_k: int = 16
    padded: bool = False  # a key-padding mask
    packed: bool = False  # segment ids
    head_dim: int = 32
    value_dim: int = 32


CASES = {
    "band gqa padded": Case(P.band(20), 70, 70, heads=4, padded=True),
    "dilated causal cross, dims 24 and 40": Case(
        P.dilated(3, 4), 50, 70, causal=True, block_k=32, head_dim=24, value_dim=40
    ),
    "global causal packed": Case(
        P.global_tokens([0, 33, -1]), 70, 70, causal=True, block_q=32, block_k=32, packed=True
    ),
    "random_blocks padded, more queries than keys": Case(
        P.random_blocks(2, KEY, 16), 80, 60, padded=True
    ),
    "longformer causal mqa packed": Case(
        P.band(60) | P.global_tokens([0]), 100, 100, causal=True, heads=4, kv_heads=1,
        block_q=32, packed=True,
    ),
    "block_local & global, rows with no key, blocks 32x16": Case(
        P.block_local(16, 3) & P.global_tokens([3]), 100, 100, kv_heads=1, block_q=32, padded=True
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_matches_dense_reference_forward_and_gradients(name):
    case = CASES[name]
    q, k, v = qkv(
        len(name), case.q_len, case.k_len, case.heads, case.kv_heads, case.head_dim, case.value_dim
    )
    key_mask = key_padding(case.k_len) if case.padded else None
    q_seg = segments(case.q_len, case.q_len // 2) if case.packed else None
    kv_seg = segments(case.k_len, case.k_len // 2) if case.packed else None

    def kernel(q, k, v):
        return block_sparse_attention(
            q, k, v, case.pattern, causal=case.causal, key_mask=key_mask, q_segment_ids=q_seg,
            kv_segment_ids=kv_seg, block_q=case.block_q, block_k=case.block_k, interpret=True,
        )  # fmt: skip

    allowed = reference_mask(
        case.pattern, case.q_len, case.k_len, case.causal, key_mask, q_seg, kv_seg
    )
    out, grads = output_and_grads(kernel, q, k, v)
    want_out, want_grads = output_and_grads(lambda q, k, v: reference(q, k, v, allowed), q, k, v)
    assert out.shape == (2, case.q_len, case.heads, case.value_dim)
    np.testing.assert_allclose(out, want_out, atol=1e-5, rtol=0)
    for got, want in zip(grads, want_grads, strict=True):
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    blind = ~np.asarray(allowed).any(axis=-1)[:, 0]  # [batch, q_len]: queries that see no key
    if "rows with no key" in name:  # some query blocks, even, list no key block
        assert blind.any()
        assert not make_block_plan(
            case.pattern, case.q_len, case.k_len, block_q=case.block_q, block_k=case.block_k,
            causal=case.causal,
        ).kv_counts.all()  # fmt: skip
        np.testing.assert_array_equal(np.asarray(out)[blind], 0.0)


def test_bfloat16_forward_within_bfloat16_tolerance():
    pattern = P.longformer(16, [0])
    q, k, v = qkv(3, 90, 90, head_dim=64, value_dim=64, dtype=jnp.bfloat16)
    out = run_unoptimised(
        lambda q, k, v: block_sparse_attention(
            q, k, v, pattern, causal=True, block_q=32, block_k=32, interpret=True
        ),
        q, k, v,
    )  # fmt: skip
    assert out.dtype == jnp.bfloat16
    allowed = reference_mask(pattern, 90, 90, True, None, None, None)
    want = reference(*(x.astype(jnp.float32) for x in (q, k, v)), allowed)
    np.testing.assert_allclose(out.astype(jnp.float32), want, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize(
    "pattern, q_len, k_len, block_q, block_k, causal",
    [
        (P.bigbird(block=16, random_blocks=2, key=KEY), 200, 200, 32, 16, False),
        (P.longformer(120, [0, -1]), 150, 180, 16, 32, True),
        (P.dilated(4, 3) & P.band(9), 130, 130, 16, 16, False),
    ],
)
def test_plan_lists_exactly_the_kept_blocks(pattern, q_len, k_len, block_q, block_k, causal):
    plan = make_block_plan(pattern, q_len, k_len, block_q=block_q, block_k=block_k, causal=causal)
    for kept, full, lists in (
        (plan.kept, plan.full, (plan.kv_blocks, plan.kv_counts, plan.kv_partial)),
        (plan.kept.T, plan.full.T, (plan.q_blocks, plan.q_counts, plan.q_partial)),
    ):
        listed, listed_full = np.zeros_like(kept), np.zeros_like(kept)
        for i, (row, count, partial) in enumerate(zip(*lists, strict=True)):
            listed[i, row[:count]] = True
            listed_full[i, row[partial:count]] = True
            assert np.all(np.diff(row[:partial]) > 0) and np.all(np.diff(row[partial:count]) > 0)
        np.testing.assert_array_equal(listed, kept)
        np.testing.assert_array_equal(listed_full, full)
    if block_q == block_k:  # the pattern's own block mask, at the kernel's block size
        want = pattern.block_mask(q_len, k_len, block_q)
        if causal:
            want &= base.causal_block_mask(q_len, k_len, block_q)
        np.testing.assert_array_equal(plan.kept, want)
    # Every allowed pair lies in a kept block, a kept block holds an allowed pair (these patterns'
    # block masks are exact), and a full block is one inside the sequences allowing every pair.
    allowed = pattern.mask(q_len, k_len)
    if causal:
        allowed &= base.causal_allowed(np.arange(q_len)[:, None], np.arange(k_len), q_len, k_len)
    n_q, n_k = plan.kept.shape
    padded = np.zeros((n_q * block_q, n_k * block_k), bool)
    padded[:q_len, :k_len] = allowed
    tiles = padded.reshape(n_q, block_q, n_k, block_k)
    np.testing.assert_array_equal(tiles.any(axis=(1, 3)), plan.kept)
    np.testing.assert_array_equal(tiles.all(axis=(1, 3)), plan.full)


def test_visits_exactly_the_kept_blocks():
    """NaN in one query block reaches exactly the outputs, dq rows and dk/dv rows of the blocks
    the plan pairs with it: the kernels read no other block."""
    pattern, length, block = P.band(20) | P.global_tokens([100]), 128, 16
    q, k, v = qkv(5, length, length, batch=1)
    poisoned = 3
    q = q.at[:, poisoned * block : (poisoned + 1) * block].set(jnp.nan)

    def kernel(q, k, v):
        return block_sparse_attention(
            q, k, v, pattern, block_q=block, block_k=block, interpret=True
        )

    out, (dq, dk, dv) = output_and_grads(kernel, q, k, v)
    kept = kept_blocks(pattern, length, length, block, block, causal=False)

    def nan_blocks(x):
        return np.isnan(np.asarray(x)).reshape(-1, block, *x.shape[1:]).any(axis=(1, 2, 3))

    only_poisoned = np.arange(length // block) == poisoned
    np.testing.assert_array_equal(nan_blocks(out[0]), only_poisoned)
    np.testing.assert_array_equal(nan_blocks(dq[0]), only_poisoned)
    np.testing.assert_array_equal(nan_blocks(dk[0]), kept[poisoned])
    np.testing.assert_array_equal(nan_blocks(dv[0]), kept[poisoned])
    assert 1 < kept[poisoned].sum() < len(kept)


def test_vmap_over_an_extra_axis():
    pattern = P.band(8) | P.global_tokens([0])
    q, k, v = (jnp.stack([x, -x]) for x in qkv(9, 40, 40))

    def kernel(q, k, v):
        return block_sparse_attention(q, k, v, pattern, block_q=16, block_k=16, interpret=True)

    batched = run_unoptimised(jax.vmap(kernel), q, k, v)
    allowed = reference_mask(pattern, 40, 40, False, None, None, None)
    want = jax.vmap(lambda q, k, v: reference(q, k, v, allowed))(q, k, v)
    np.testing.assert_allclose(batched, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"block_q": 24}, "block_q must be a power of two"),
        ({"block_k": 8}, "block_k must be a power of two"),
        ({"key_mask": jnp.ones((2, 5), bool)}, "key_mask must be bool"),
        ({"q_segment_ids": jnp.zeros((2, 20), jnp.int32)}, "given together"),
    ],
)
def test_rejects_bad_arguments(kwargs, match):
    q, k, v = qkv(0, 20, 20)
    with pytest.raises(ValueError, match=match):
        block_sparse_attention(q, k, v, P.band(2), interpret=True, **kwargs)


def test_rejects_kv_heads_that_do_not_divide_heads():
    q, k, v = qkv(0, 20, 20, heads=3, kv_heads=2)
    with pytest.raises(ValueError, match="must divide"):
        block_sparse_attention(q, k, v, P.band(2), interpret=True)


@pytest.mark.skipif(
    importlib.util.find_spec("jax_cuda12_plugin") is None, reason="jax_cuda12_plugin missing"
)
def test_compiles_forward_and_backward_for_an_h100():
    """The predicate in the kernel (dilated | block_local | global: `%`, `//` and ranges, with
    segment ids and a key mask) and element-mask tiles (BigBird's random blocks): the compiled
    programs run the three Triton kernels."""
    if os.environ.get("JAX_PLATFORMS") != "cpu":
        # Without a GPU the CUDA plugin registers its deviceless topology only in a process that
        # does not try to initialise CUDA: run this test again in one.
        test = f"{__file__}::test_compiles_forward_and_backward_for_an_h100"
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        return
    from polyformer import targets

    mesh = jax.sharding.Mesh(np.array(targets.devices("h100x8")[:1]), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    shapes = [(1, 300, 4, 64), (1, 300, 2, 64), (1, 300, 2, 64)]
    args = [jax.ShapeDtypeStruct(s, jnp.bfloat16, sharding=replicated) for s in shapes]
    args += [
        jax.ShapeDtypeStruct((1, 300), dtype, sharding=replicated)
        for dtype in (jnp.int32, jnp.bool_)
    ]
    predicate = P.dilated(8, 3) | P.block_local(32, 3) | P.global_tokens([0])
    tables = P.bigbird(64, random_blocks=2, key=KEY)
    for pattern, sides in ((predicate, True), (tables, False)):

        def loss(q, k, v, ids, key_mask, pattern=pattern, sides=sides):
            extra = {"q_segment_ids": ids, "kv_segment_ids": ids, "key_mask": key_mask}
            out = block_sparse_attention(
                q, k, v, pattern, causal=True, block_q=32, block_k=64, **(extra if sides else {})
            )
            return out.astype(jnp.float32).sum()

        text = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*args).compile().as_text()
        assert text.count('custom_call_target="__gpu$xla.gpu.triton"') == 3
        for name in ("block_sparse_forward", "block_sparse_dq", "block_sparse_dkdv"):
            assert f'name = "{name}"' in text
