"""Which rows of a dataset each host reads at each step, and the iterator the trainer reads them
with: the batching plan both in-memory pipelines (lm.py's token windows, arrays.py's example
arrays) share.

Every host forms the same global batch of row numbers (shuffled per epoch with `seed`) and keeps
its contiguous block of rows: host `h` of `P` holds rows `h * B / P` up to `(h + 1) * B / P`.
That is the order in which `jax.make_array_from_process_local_data` stacks host batches, so the
global batch is row for row the one-host batch: changing the number of hosts changes where a row
is computed, not what the model sees, not even per-row randomness such as dropout masks.
"""

from __future__ import annotations

import dataclasses

import grain
import jax


@dataclasses.dataclass(frozen=True)
class HostBatches:
    """Which rows of a dataset this host reads at each step.

    Every host forms the same global batches of `global_batch` row numbers, shuffled per epoch
    with `seed` (None: in order, e.g. for evaluation) and repeated `num_epochs` times (None:
    forever; a number drops the tail that does not fill a global batch, so that every host
    takes the same number of steps), and keeps its contiguous block of rows: host
    `process_index` of `process_count` (default: this JAX process) rows `[i * B / P,
    (i + 1) * B / P)`.
    """

    global_batch: int
    seed: int | None
    num_epochs: int | None = None
    process_index: int | None = None
    process_count: int | None = None

    def rows(self) -> slice:
        """This host's block of each global batch."""
        index = jax.process_index() if self.process_index is None else self.process_index
        count = jax.process_count() if self.process_count is None else self.process_count
        if self.global_batch % count:
            raise ValueError(f"global_batch {self.global_batch} does not split over {count} hosts")
        rows = self.global_batch // count
        return slice(index * rows, (index + 1) * rows)

    def of(self, size: int) -> grain.MapDataset:
        """The global batches of row numbers 0..size-1: element `step` is int `[global_batch]`."""
        ds = grain.MapDataset.range(size)
        if self.seed is not None:
            ds = ds.shuffle(self.seed)  # Reseeded per epoch by the repeat below.
        ds = ds.repeat(self.num_epochs)
        if self.num_epochs is not None:
            ds = ds[: len(ds) // self.global_batch * self.global_batch]
        return ds.batch(self.global_batch, drop_remainder=True)


def batch_iterator(dataset: grain.MapDataset, prefetch: int = 4) -> grain.DatasetIterator:
    """An iterator over `dataset` that reads up to `prefetch` batches ahead on one thread (0: on
    demand). `get_state()` -> `{"next_index": step}` and `set_state(state)` save and restore its
    position, ahead-read batches notwithstanding (the trainer's checkpoints store that state as
    JSON beside the train state)."""
    options = grain.ReadOptions(num_threads=1 if prefetch else 0, prefetch_buffer_size=prefetch)
    return iter(dataset.to_iter_dataset(options))
