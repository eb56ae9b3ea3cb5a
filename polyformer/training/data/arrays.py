"""Training data that fits in memory: named numpy arrays, one row an example.

The sets the vision, speech and table experiments build (digits, synthesized speech, generated
tables) are small enough to hold as arrays. `ArrayData` serves them to the trainer the way
`LMData` serves a corpus: each global batch is a function of the step number alone (shuffled per
epoch with the run's seed), every host keeps its contiguous block of rows, and the iterator saves
and restores its position with `get_state()` / `set_state()`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import grain
import jax
import numpy as np

from polyformer.training.data.batches import HostBatches, batch_iterator
from polyformer.training.data.protocol import Batch


def _check(arrays: Batch, split: str) -> int:
    if not arrays:
        raise ValueError(f"{split}: no arrays given")
    sizes = {name: len(a) for name, a in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"{split}: arrays differ in their number of rows: {sizes}")
    return next(iter(sizes.values()))


def _rows(arrays: Batch, indices: np.ndarray) -> Batch:
    return {name: a[indices] for name, a in arrays.items()}


def array_dataset(
    arrays: Batch,
    batches: HostBatches,
    transform: Callable[[Batch, np.random.Generator], Batch] | None = None,
) -> grain.MapDataset:
    """Batches of rows of `arrays`, this host's rows of `batches` (`global_batch //
    process_count` of each). `transform(batch, rng)` augments them; `rng` is drawn from the
    seed, the step and the host's first row, so a resumed run augments as the original did.
    """
    mine = batches.rows()
    size = _check(arrays, "data")
    if size < batches.global_batch:
        raise ValueError(f"{size} examples do not fill one global batch of {batches.global_batch}")
    seed = batches.seed or 0
    ds = batches.of(size)

    def read(step: int, indices: np.ndarray) -> Batch:
        batch = _rows(arrays, indices[mine])
        if transform is None:
            return batch
        return transform(batch, np.random.default_rng([seed, step, mine.start]))

    return ds.map_with_index(read)


@dataclasses.dataclass(frozen=True)
class ArrayData:
    """In-memory train and evaluation sets, as the trainer reads them.

    Attributes:
      train, eval: name -> array, each `[examples, ...]`; the names are the batch keys the
        objective reads.
      tokens_per_example: what one example counts for in the throughput (tokens, patches,
        frames).
      model_overrides: fields the model config takes from the data (`num_labels`, `id2label`,
        `vocab_size`, ...).
      saver: `saver(directory)` writes the processor files (image processor, tokenizer) beside an
        exported model, so that the directory is a complete Hugging Face checkpoint.
      transform: `transform(batch, rng) -> batch` augments training batches (never evaluation).
    """

    train: Batch
    eval: Batch
    tokens_per_example: int
    model_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    saver: Callable[[str | os.PathLike], None] | None = None
    transform: Callable[[Batch, np.random.Generator], Batch] | None = None

    def __post_init__(self):
        if set(self.train) != set(self.eval):
            raise ValueError(
                f"train and eval arrays differ in names: {sorted(self.train)} vs "
                f"{sorted(self.eval)}"
            )
        _check(self.train, "train")
        _check(self.eval, "eval")

    def train_iterator(
        self, batch_size: int, seed: int, shard_index: int, shard_count: int
    ) -> grain.DatasetIterator:
        """This host's share, `batch_size` rows, of global batches of `batch_size *
        shard_count` examples, repeating over epochs."""
        batches = HostBatches(batch_size * shard_count, seed, None, shard_index, shard_count)
        dataset = array_dataset(self.train, batches, self.transform)
        return batch_iterator(dataset)

    def eval_batches(self, batch_size: int, count: int) -> list[Batch]:
        """The first `count` (at most one pass's) evaluation batches, in order, this process's
        `batch_size` rows of each; a last partial global batch is left out."""
        batches = HostBatches(batch_size * jax.process_count(), seed=None, num_epochs=1)
        dataset = array_dataset(self.eval, batches)
        return [dataset[step] for step in range(min(count, len(dataset)))]

    def save(self, directory: str | os.PathLike) -> None:
        if self.saver is not None:
            self.saver(directory)
