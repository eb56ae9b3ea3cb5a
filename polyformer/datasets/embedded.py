"""What every embedded dataset shares: array_record files, the split by a stable hash, and one
TFDS config name per parameter set."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any, TypeVar

import tensorflow_datasets as tfds

_Config = TypeVar("_Config", bound=tfds.core.BuilderConfig)
_BUILDER_FIELDS = frozenset(f.name for f in dataclasses.fields(tfds.core.BuilderConfig))


def split_of(key: str, validation_percent: int) -> str:
    """The split of an example, "validation" or "train", from a hash of its `key` (a file path,
    a transcript, an index): stable across runs, machines and Python versions (unlike `hash()`,
    which is salted per process)."""
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 100
    return "validation" if bucket < validation_percent else "train"


def config_name(prefix: str, parameters: tuple) -> str:
    """`prefix` and a digest of `parameters`: one TFDS config per parameter set, so that sets of
    different sizes never mix on disk."""
    return f"{prefix}_{hashlib.sha256(repr(parameters).encode()).hexdigest()[:10]}"


def named_config(cls: type[_Config], prefix: str, values: Mapping[str, Any]) -> _Config:
    """A `cls` (a BuilderConfig dataclass) whose own fields take their values from `values`
    (extra keys ignored), named by `config_name` over those values in field order."""
    params = {
        f.name: values[f.name] for f in dataclasses.fields(cls) if f.name not in _BUILDER_FIELDS
    }
    return cls(name=config_name(prefix, tuple(params.values())), **params)


class EmbeddedBuilder(tfds.core.GeneratorBasedBuilder):
    """A builder whose data are made on this machine: preparing it never needs the network.

    It writes array_record files, which TFDS writes and reads without TensorFlow (and grain
    reads); TFDS's own default, tfrecord, needs TensorFlow.
    """

    # Each set is at its first release; one that changes what it writes declares its own.
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}

    def __init__(self, *, file_format: str = "array_record", **kwargs):
        super().__init__(file_format=file_format, **kwargs)
