"""The data contract: what a run config's `data` is and what its `load()` gives the trainer.

A data config (`TextData`, `DigitImages`, `DigitCaptions`, `SpokenDigitsData`, `TableQuestionsData`,
or one of a user's own) is a frozen dataclass whose fields `--set data.FIELD=...` overrides and
whose `load()` returns a `TrainData`. `LMData` and `ArrayData` are the two `TrainData` this package
implements; the data configs build one of them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

Batch = dict[str, np.ndarray]


@runtime_checkable
class TrainIterator(Protocol):
    """An endless iterator of this host's batches whose position survives a checkpoint:
    `get_state()` is JSON the checkpoint stores, `set_state(state)` resumes from it."""

    def __iter__(self) -> Iterator[Batch]: ...

    def __next__(self) -> Batch: ...

    def get_state(self) -> dict[str, Any]: ...

    def set_state(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class TrainData(Protocol):
    """What the trainer reads.

    Attributes:
      model_overrides: model config fields the data decides (vocab_size, num_labels, ...).
      tokens_per_example: what one example counts for in the throughput (tokens, patches, frames).
    """

    @property
    def model_overrides(self) -> Mapping[str, Any]: ...

    @property
    def tokens_per_example(self) -> int: ...

    def train_iterator(
        self, batch_size: int, seed: int, shard_index: int, shard_count: int
    ) -> TrainIterator:
        """Host `shard_index` of `shard_count`'s rows, `batch_size` of them, of each global batch
        (dicts of `[batch, ...]` numpy arrays keyed as the objective reads them), shuffled with
        `seed`, repeating over epochs."""
        ...

    def eval_batches(self, batch_size: int, count: int) -> list[Batch]:
        """Up to `count` evaluation batches, this process's `batch_size` rows of each: the same
        at every call."""
        ...

    def save(self, directory: str | os.PathLike) -> None:
        """Writes the tokenizer or processor files beside an exported model."""
        ...


@runtime_checkable
class DataConfig(Protocol):
    """A run config's `data`: a frozen dataclass with `load()`."""

    def load(self) -> TrainData: ...
