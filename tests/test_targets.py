"""The target table and its deviceless devices (needs the accelerators extra)."""

import re

import pytest

from polyformer import targets

# Every target the project promises, with what JAX calls its devices.
REQUIRED = {
    "v4-8": "TPU v4",
    "v5e-4": "TPU v5 lite",
    "v5e-16": "TPU v5 lite",
    "v5e-256": "TPU v5 lite",
    "v5p-8": "TPU v5",
    "v5p-128": "TPU v5",
    "v6e-8": "TPU v6 lite",
    "v6e-256": "TPU v6 lite",
    "h100x8": "NVIDIA H100 80GB HBM3",
    "h200x8": "NVIDIA H200 141GB HBM3e",
    "2xh100x8": "NVIDIA H100 80GB HBM3",
}


def test_the_table_has_every_required_target_with_its_figures_and_source():
    assert set(REQUIRED) <= set(targets.TARGETS)
    for name, t in targets.TARGETS.items():
        assert t.name == name
        assert t.platform in ("tpu", "cuda")
        assert t.hbm_bytes >= 16 * targets.GiB and t.peak_flops >= 1e14 and t.hbm_bandwidth >= 8e11
        assert f"[{t.source}]" in targets.__doc__


@pytest.mark.parametrize("name", REQUIRED)
def test_devices_are_the_target_s(name):
    devices = targets.devices(name)
    target = targets.get(name)
    assert len(devices) == target.num_devices
    assert {d.device_kind for d in devices} == {REQUIRED[name]}


def test_two_gpu_machines_are_two_hosts_of_eight():
    hosts = [d.process_index for d in targets.devices("2xh100x8")]
    assert sorted(hosts) == [0] * 8 + [1] * 8


def test_gpu_spec_memory_matches_the_table():
    for name in ("h100x8", "h200x8"):
        t = targets.get(name)
        text = t.gpu_spec.target_config()
        assert f"device_memory_size: {t.hbm_bytes}\n" in text
        bandwidth = float(re.search(r"memory_bandwidth: (\d+)", text)[1])
        assert bandwidth == t.hbm_bandwidth


def test_an_unknown_target_lists_the_known_ones():
    with pytest.raises(targets.UnknownTargetError, match="v5e-16.*h100x8") as error:
        targets.devices("v5e-3")
    assert "'v5e-3'" in str(error.value)
    assert isinstance(error.value, ValueError)
