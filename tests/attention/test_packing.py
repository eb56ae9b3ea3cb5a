"""Sequence packing (segment_ids) and grouped-query heads, for every kernel and implementation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polyformer import attention as A
from polyformer.attention import patterns as P
from tests.attention.test_splash import qkv

KERNELS = {
    "dense": lambda impl: A.Dense(implementation=impl),
    "sparse": lambda impl: A.Sparse(P.band(9) | P.dilated(3, 4), block=16, implementation=impl),
    "favor": lambda impl: A.Favor(64, chunk=16, implementation=impl),
}
# (kernel, implementation, causal); Pallas kernels run in interpret mode on this CPU.
CASES = [
    *[(name, "xla", causal) for name in KERNELS for causal in (False, True)],
    ("dense", "pallas_tpu", True),
    ("sparse", "pallas_tpu", False),
    ("dense", "pallas_gpu", True),
    ("sparse", "pallas_gpu", True),
]


@pytest.mark.parametrize("name, implementation, causal", CASES)
def test_two_sequences_packed_in_one_row_give_what_each_gives_alone(name, implementation, causal):
    lengths = (37, 91) if implementation == "xla" else (60, 80)
    total = sum(lengths)
    q, k, v = qkv(0, total, heads=4, kv_heads=2, head_dim=32, batch=1)
    segments = jnp.asarray(np.repeat([[3, 8]], lengths, axis=1))
    kernel, alone = KERNELS[name](implementation), KERNELS[name]("xla")
    parts = [slice(start, start + n) for start, n in zip((0, lengths[0]), lengths, strict=True)]

    @jax.jit  # one compile: eagerly, every operation of the kernels compiles by itself
    def packed_and_alone(q, k, v):
        packed = kernel(q, k, v, causal=causal, segment_ids=segments)
        return packed, [alone(q[:, part], k[:, part], v[:, part], causal=causal) for part in parts]

    packed, wants = packed_and_alone(q, k, v)
    for part, want in zip(parts, wants, strict=True):
        np.testing.assert_allclose(packed[:, part], want, atol=1e-5)


@pytest.mark.parametrize("name", KERNELS)
def test_grouped_query_heads_equal_repeated_key_value_heads(name):
    q, k, v = qkv(1, 45, 50, heads=6, kv_heads=2, head_dim=16)
    kernel = KERNELS[name]("xla")
    pad = jnp.ones((2, 50), bool).at[1, 40:].set(False)
    grouped, repeated = jax.jit(
        lambda q, k, v: (
            kernel(q, k, v, pad),
            kernel(q, jnp.repeat(k, 3, axis=2), jnp.repeat(v, 3, axis=2), pad),
        )
    )(q, k, v)
    np.testing.assert_allclose(grouped, repeated, atol=1e-5)


def test_segment_ids_are_checked():
    q, k, v = qkv(2, 8, 12, heads=2, kv_heads=2, head_dim=8)
    with pytest.raises(ValueError, match="pair"):
        A.Dense(implementation="xla")(q, k, v, segment_ids=jnp.zeros((2, 8), int))
    with pytest.raises(ValueError, match="integers"):
        A.Dense(implementation="xla")(q, q, q, segment_ids=jnp.zeros((2, 8)))
    with pytest.raises(ValueError, match="q_length == k_length"):
        A.Favor(8)(q, k, v, segment_ids=(jnp.zeros((2, 8), int), jnp.zeros((2, 12), int)))


def test_dense_chunks_on_cpu_with_grouped_heads():
    """Big enough for the CPU's query chunks (heads split inside a group, and rows). The call
    under test runs eagerly: the file's one eager kernel call."""
    q, k, v = qkv(3, 1100, heads=4, kv_heads=2, head_dim=8, batch=1)
    out = A.Dense(implementation="xla")(q, k, v, causal=True)
    repeated = jax.jit(lambda q, k, v: A.Dense(implementation="xla")(q, k, v, causal=True))
    want = repeated(q, jnp.repeat(k, 2, axis=2), jnp.repeat(v, 2, axis=2))
    np.testing.assert_allclose(out, want, atol=1e-5)


@pytest.mark.parametrize("name", ["dense", "sparse"])
def test_auto_keeps_forward_mode_differentiation_on_cpu(name):
    """The Pallas branches are custom VJPs, which jax.jvp refuses; on CPU "auto" is XLA."""
    q, k, v = qkv(4, 24, heads=2, kv_heads=2, head_dim=8)
    kernel = KERNELS[name]("auto")
    out, tangent = jax.jit(lambda q: jax.jvp(lambda q: kernel(q, k, v, causal=True), (q,), (q,)))(q)
    xla = KERNELS[name]("xla")
    want = jax.jit(lambda q: jax.jvp(lambda q: xla(q, k, v, causal=True), (q,), (q,)))(q)
    np.testing.assert_allclose(out, want[0], atol=1e-6)
    np.testing.assert_allclose(tangent, want[1], atol=1e-5)
