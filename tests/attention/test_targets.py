"""Every kernel with implementation="auto" compiles for a TPU (v5e) and an H100 with no device
present, and the program holds that target's Pallas kernel where the kernel has one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding

from polyformer import attention as A
from polyformer.attention import patterns as P
from polyformer.training import sharding
from tests.attention.conftest import target_devices

# What a Pallas kernel leaves in the lowered program: a Mosaic custom call on TPU, a Triton call
# on GPU.
PALLAS_MARK = {"tpu": "tpu_custom_call", "cuda": "__gpu$xla.gpu.triton"}
PALLAS_IMPLEMENTATIONS = [("pallas_tpu", "tpu"), ("pallas_gpu", "cuda")]
KERNELS = {
    "dense": (A.Dense(), {"tpu", "cuda"}),
    "sparse": (A.Sparse(P.band(64) | P.global_tokens([0])), {"tpu", "cuda"}),
    "favor": (A.Favor(64), set()),
}


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
@pytest.mark.parametrize("name", KERNELS)
def test_auto_compiles_for_the_target_with_its_pallas_kernel(name, platform):
    kernel, pallas_on = KERNELS[name]
    sharding = SingleDeviceSharding(target_devices(platform)[0])
    x = jax.ShapeDtypeStruct((1, 256, 2, 128), jnp.bfloat16, sharding=sharding)

    def loss(q, k, v):
        return jnp.sum(kernel(q, k, v, causal=True).astype(jnp.float32))

    lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(x, x, x)
    lowered = lowered.lower(lowering_platforms=(platform,))
    assert (PALLAS_MARK[platform] in lowered.as_text()) == (platform in pallas_on)
    lowered.compile()


@pytest.mark.parametrize(
    "implementation, platform", [("pallas_tpu", "tpu"), ("pallas_gpu", "cuda")]
)
def test_a_pallas_implementation_is_interpreted_only_when_lowered_for_cpu(implementation, platform):
    kernel = A.Dense(implementation=implementation)
    x = jax.ShapeDtypeStruct((1, 128, 2, 64), jnp.float32)
    on_target = jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=SingleDeviceSharding(target_devices(platform)[0])
    )
    for shape, lowering, real in ((on_target, platform, True), (x, "cpu", False)):
        lowered = jax.jit(kernel).trace(shape, shape, shape).lower(lowering_platforms=(lowering,))
        assert (PALLAS_MARK[platform] in lowered.as_text()) == real


def test_auto_takes_xla_attention_under_a_mesh_without_a_layout():
    """GSPMD cannot split a Pallas call, so a program traced under a mesh of several devices but
    no layout (not the trainer's) gets XLA's attention, which compiles for a 4-chip TPU with the
    batch split."""
    mesh = jax.sharding.Mesh(np.array(target_devices("tpu")), ("data",))
    split = NamedSharding(mesh, PartitionSpec("data"))
    x = jax.ShapeDtypeStruct((4, 256, 2, 128), jnp.bfloat16, sharding=split)

    def attend(q, k, v):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return A.Dense()(q, k, v, causal=True)

    lowered = jax.jit(attend).trace(x, x, x).lower(lowering_platforms=("tpu",))
    assert PALLAS_MARK["tpu"] not in lowered.as_text()
    lowered.compile()


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_auto_runs_the_pallas_kernel_per_shard_under_the_trainer_s_layout(platform):
    """Under the trainer's layout (batch over data x fsdp, heads over tensor) the Pallas kernel
    runs on each device's shard, forward and backward, and compiles for the target."""
    devices = target_devices(platform)[:4]
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=2, tensor=2), devices)
    rules = sharding.DEFAULT_RULES
    x = jax.ShapeDtypeStruct(
        (4, 256, 4, 128), jnp.bfloat16, sharding=sharding.batch_sharding(mesh, rules)
    )

    def loss(q, k, v):
        return jnp.sum(A.Dense()(q, k, v, causal=True).astype(jnp.float32))

    step = sharding.constrained(jax.grad(loss, argnums=(0, 1, 2)), mesh, rules)
    lowered = jax.jit(step).trace(x, x, x).lower(lowering_platforms=(platform,))
    text = lowered.as_text()
    assert PALLAS_MARK[platform] in text and "sdy.manual_computation" in text
    lowered.compile()


@pytest.mark.parametrize("implementation", ["auto", "pallas_tpu"])
@pytest.mark.parametrize("platform", [None, "cpu", "tpu"])
def test_under_a_layout_only_its_devices_kernel_is_traced(platform, implementation):
    """A program traced under a layout is compiled for its mesh's devices, so "auto" traces their
    branch alone (XLA's on a CPU, the Pallas kernel on a TPU), and a Pallas implementation is
    interpreted or not by them; outside a layout every branch is traced and the choice waits for
    the lowering."""
    x = jax.ShapeDtypeStruct((4, 256, 4, 128), jnp.bfloat16)

    def loss(q, k, v):
        out = A.Dense(implementation=implementation)(q, k, v, causal=True)
        return jnp.sum(out.astype(jnp.float32))

    step = jax.grad(loss, argnums=(0, 1, 2))
    if platform is not None:
        devices = jax.devices("cpu") if platform == "cpu" else target_devices(platform)[:4]
        mesh = sharding.make_mesh(sharding.MeshConfig(data=-1), devices)
        step = sharding.constrained(step, mesh, sharding.DEFAULT_RULES)
    jaxpr = str(jax.jit(step).trace(x, x, x).jaxpr)
    assert ("platform_index" in jaxpr) == (platform is None)
    assert ("pallas_call" in jaxpr) == (platform != "cpu" or implementation != "auto")
