"""The layout: activations pinned by their logical axes only under it, and the Pallas kernels run
on each device's rows of the batch and its heads, heads split only where the query and key/value
heads split alike."""

import jax
import jax.numpy as jnp
import pytest

from polyformer.attention import layout
from polyformer.training import sharding
from tests.attention.conftest import target_devices


def test_without_a_layout_constrain_is_the_identity_and_per_shard_a_plain_call():
    x = jnp.ones((2, 3, 4))
    assert layout.constrain(x, ("batch", "length", "embed")) is x
    assert layout.per_shard(lambda q, k, v, mask, segments: q, x, x, x, None, None) is x


@pytest.mark.parametrize("kv_heads, local_heads", [(4, (2, 2)), (2, (2, 1)), (1, (4, 1))])
def test_each_device_gets_its_batch_rows_and_heads_split_alike(kv_heads, local_heads):
    """A mesh of fsdp 2 x tensor 2: the batch of 4 splits over fsdp, 4 query heads over tensor
    when the key/value heads split too (grouped heads stay with their key head)."""
    mesh = sharding.make_mesh(
        sharding.MeshConfig(data=1, fsdp=2, tensor=2), target_devices("tpu")[:4]
    )
    rules = sharding.DEFAULT_RULES
    seen = {}

    def kernel(q, k, v, mask, segments):
        seen.update(q=q.shape, k=k.shape, mask=mask.shape, segments=[s.shape for s in segments])
        return q

    def attend(q, k, v, mask, ids):
        return layout.per_shard(kernel, q, k, v, mask, (ids, ids))

    q = jax.ShapeDtypeStruct((4, 16, 4, 8), jnp.float32)
    kv = jax.ShapeDtypeStruct((4, 16, kv_heads, 8), jnp.float32)
    rows = jax.ShapeDtypeStruct((4, 16), jnp.int32)
    jax.jit(sharding.constrained(attend, mesh, rules)).trace(
        q, kv, kv, jax.ShapeDtypeStruct((4, 16), bool), rows
    )
    q_heads, kv_local = local_heads
    assert seen["q"] == (2, 16, q_heads, 8) and seen["k"] == (2, 16, kv_local, 8)
    assert seen["mask"] == (2, 16) and seen["segments"] == [(2, 16), (2, 16)]
