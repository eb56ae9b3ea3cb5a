"""Deviceless TPU and H100 devices for the attention compile tests."""

import pytest

from polyformer import targets

TARGET = {"tpu": "v5e-4", "cuda": "h100x8"}


def target_devices(platform: str):
    """The devices of a deviceless v5e-4 (platform "tpu") or H100 x 8 (platform "cuda"); they
    compile but never run. Skips the test when libtpu or the CUDA plugin is not importable."""
    try:
        return targets.devices(TARGET[platform])
    except Exception as error:  # noqa: BLE001 - any failure to load the plugin means "skip"
        pytest.skip(f"no {platform} compiler here: {error}")
