"""TPU slices and GPU machines to compile for: topology, memory, peak FLOP/s, bandwidth.

`devices(name)` gives a target's devices without the hardware (JAX's deviceless topologies:
libtpu for TPUs, jax-cuda12-plugin with an XLA GPU target spec for NVIDIA GPUs); a program
jitted over a mesh of them compiles as it would on the target. Figures are per device, as JAX
counts devices: one per TPU chip (v4 and v5p as megacore chips, as JAX exposes them) and one per
GPU. Sources:
  [tpu-v4]  https://cloud.google.com/tpu/docs/v4 (275 TFLOP/s bf16, 32 GiB HBM2, 1200 GB/s)
  [tpu-v5e] https://cloud.google.com/tpu/docs/v5e (197 TFLOP/s bf16, 16 GiB HBM2, 819 GB/s)
  [tpu-v5p] https://cloud.google.com/tpu/docs/v5p (459 TFLOP/s bf16, 95 GiB HBM2e, 2765 GB/s)
  [tpu-v6e] https://cloud.google.com/tpu/docs/v6e (918 TFLOP/s bf16, 32 GiB HBM, 1640 GB/s)
  [h100]    NVIDIA H100 data sheet, SXM5: 989 TFLOP/s dense bf16 (1979 is with sparsity), 80 GB
            HBM3 (79.1 GiB as CUDA reports it), 3.35 TB/s; 132 SMs at 1.98 GHz, 50 MiB L2,
            228 KiB shared memory per SM (NVIDIA's Hopper tuning guide).
  [h200]    NVIDIA H200 data sheet, SXM: 989 TFLOP/s dense bf16, 141 GB HBM3e (141 GiB as CUDA
            reports it), 4.8 TB/s; the same SMs as the H100.
A GPU target's compiler description (XLA's GpuTargetConfigProto) is written by `GpuSpec` from
these figures: what XLA needs to pick kernels and tile sizes, without its cost-model tables.
"""

from __future__ import annotations

import dataclasses
import functools

import jax

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Target:
    """One machine or slice to compile for.

    Attributes:
      name: what `polyformer compile --target` takes.
      platform: "tpu" or "cuda".
      topology: the TPU topology name (`"v5e:2x2"`) or, for GPUs, `"hosts x 1 x gpus per host"`.
      num_devices: devices JAX sees on the whole target (all hosts).
      hbm_bytes: memory of one device.
      peak_flops: dense bfloat16 FLOP/s of one device.
      hbm_bandwidth: bytes/s between one device and its memory.
      source: where the figures come from (a key of the module docstring's list).
      gpu_spec: the GPU's compiler description (GPUs only).
      chip_config: libtpu's chip configuration ("megacore": one device per v4 chip).
    """

    name: str
    platform: str
    topology: str
    num_devices: int
    hbm_bytes: int
    peak_flops: float
    hbm_bandwidth: float
    source: str
    gpu_spec: GpuSpec | None = None
    chip_config: str | None = None


@dataclasses.dataclass(frozen=True)
class GpuSpec:
    """What XLA's GPU compiler needs to know about one NVIDIA GPU (Hopper defaults)."""

    name: str
    memory_bytes: int
    bandwidth: float
    compute_capability: tuple[int, int] = (9, 0)
    sm_count: int = 132
    clock_ghz: float = 1.98
    l2_bytes: int = 50 * 2**20
    shared_memory_per_sm: int = 228 * 1024
    shared_memory_per_block_optin: int = 227 * 1024

    def target_config(self) -> str:
        """The GpuTargetConfigProto text that `get_topology_desc(platform="cuda", ...)` takes."""
        major, minor = self.compute_capability
        return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {self.shared_memory_per_sm}
  threads_per_core_limit: 2048
  core_count: {self.sm_count}
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(self.bandwidth)}
  l2_cache_size: {self.l2_bytes}
  clock_rate_ghz: {self.clock_ghz}
  device_memory_size: {self.memory_bytes}
  shared_memory_per_block_optin: {self.shared_memory_per_block_optin}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 10 }}
device_description_str: "{self.name}"
"""


H100 = GpuSpec("NVIDIA H100 80GB HBM3", 84_942_979_072, 3.35e12)
H200 = GpuSpec("NVIDIA H200 141GB HBM3e", 141 * GiB, 4.8e12)


def _tpu(name, topology, count, memory_gib, flops, bandwidth, source, chip_config=None):
    return Target(
        name, "tpu", topology, count, memory_gib * GiB, flops, bandwidth, source, None, chip_config
    )


def _gpu(name, hosts, per_host, flops, source, spec):
    return Target(
        name, "cuda", f"{hosts}x1x{per_host}", hosts * per_host, spec.memory_bytes, flops,
        spec.bandwidth, source, spec,
    )  # fmt: skip


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        _tpu("v4-8", "v4:2x2x1", 4, 32, 275e12, 1.2e12, "tpu-v4", chip_config="megacore"),
        _tpu("v5e-4", "v5e:2x2", 4, 16, 197e12, 819e9, "tpu-v5e"),
        _tpu("v5e-16", "v5e:4x4", 16, 16, 197e12, 819e9, "tpu-v5e"),
        _tpu("v5e-256", "v5e:16x16", 256, 16, 197e12, 819e9, "tpu-v5e"),
        _tpu("v5p-8", "v5p:2x2x1", 4, 95, 459e12, 2765e9, "tpu-v5p"),
        _tpu("v5p-128", "v5p:4x4x4", 64, 95, 459e12, 2765e9, "tpu-v5p"),
        _tpu("v6e-8", "v6e:2x4", 8, 32, 918e12, 1640e9, "tpu-v6e"),
        _tpu("v6e-256", "v6e:16x16", 256, 32, 918e12, 1640e9, "tpu-v6e"),
        _gpu("h100x8", 1, 8, 989e12, "h100", H100),
        _gpu("h200x8", 1, 8, 989e12, "h200", H200),
        _gpu("2xh100x8", 2, 8, 989e12, "h100", H100),
    )
}


class UnknownTargetError(ValueError):
    """A target name that is not in TARGETS."""


def get(name: str) -> Target:
    """The target called `name`; an UnknownTargetError listing the known names otherwise."""
    if name not in TARGETS:
        raise UnknownTargetError(f"unknown target {name!r}; known targets: {', '.join(TARGETS)}")
    return TARGETS[name]


@functools.cache
def devices(name: str) -> tuple[jax.Device, ...]:
    """The devices of target `name`, as a deviceless topology: they compile but never run.

    TPUs need libtpu (`jax[tpu]`); GPUs need `jax-cuda12-plugin` and `JAX_PLATFORMS=cpu` in the
    environment on a machine without a GPU (the plugin refuses to initialise otherwise).
    """
    from jax.experimental import topologies

    target = get(name)
    if target.platform == "tpu":
        extra = {"chip_config_name": target.chip_config} if target.chip_config else {}
        topology = topologies.get_topology_desc(
            platform="tpu", topology_name=target.topology, **extra
        )
    else:
        topology = topologies.get_topology_desc(
            platform="cuda",
            topology_name="",
            target_config=target.gpu_spec.target_config(),
            topology=target.topology,
        )
    found = tuple(topology.devices)
    if len(found) != target.num_devices:
        raise RuntimeError(
            f"target {name}: topology {target.topology} gave {len(found)} devices, the table says "
            f"{target.num_devices}"
        )
    return found
