"""In-memory training data (ArrayData)."""

import numpy as np
import pytest

from polyformer.training.data import ArrayData, HostBatches, array_dataset


def arrays(n: int = 10) -> dict[str, np.ndarray]:
    return {"x": np.arange(n * 2).reshape(n, 2), "y": np.arange(n)}


def test_an_epoch_visits_every_row_once_and_rows_stay_paired():
    ds = array_dataset(arrays(), HostBatches(global_batch=5, seed=3))
    epoch = [ds[step] for step in range(2)]
    seen = np.concatenate([b["y"] for b in epoch])
    assert sorted(seen) == list(range(10)) and list(seen) != list(range(10))
    for batch in epoch:
        np.testing.assert_array_equal(batch["x"][:, 0], 2 * batch["y"])
    assert not np.array_equal(ds[2]["y"], ds[0]["y"])  # the next epoch is shuffled anew


def test_hosts_hold_contiguous_blocks_of_the_same_global_batch():
    whole = array_dataset(arrays(), HostBatches(4, seed=0, process_index=0, process_count=1))
    parts = [
        array_dataset(arrays(), HostBatches(4, seed=0, process_index=h, process_count=2))
        for h in range(2)
    ]
    for step in range(5):
        joined = np.concatenate([p[step]["y"] for p in parts])
        np.testing.assert_array_equal(joined, whole[step]["y"])


def test_transform_is_reproducible_and_an_iterator_resumes_exactly():
    def jitter(batch, rng):
        return dict(batch, x=batch["x"] + rng.normal(size=batch["x"].shape))

    data = ArrayData(arrays(), arrays(4), tokens_per_example=2, transform=jitter)
    first = data.train_iterator(2, seed=1, shard_index=0, shard_count=1)
    batches = [next(first) for _ in range(3)]
    state = first.get_state()
    following = next(first)
    again = data.train_iterator(2, seed=1, shard_index=0, shard_count=1)
    np.testing.assert_array_equal(next(again)["x"], batches[0]["x"])
    again.set_state(state)
    np.testing.assert_array_equal(next(again)["x"], following["x"])
    assert not np.array_equal(batches[0]["x"] % 1, np.zeros((2, 2)))  # the transform ran
    np.testing.assert_array_equal(data.eval_batches(2, 5)[1]["y"], [2, 3])  # eval: in order


def test_bad_arrays_are_refused():
    with pytest.raises(ValueError, match="differ in their number of rows"):
        ArrayData({"x": np.zeros(3), "y": np.zeros(4)}, {"x": np.zeros(1), "y": np.zeros(1)}, 1)
    with pytest.raises(ValueError, match="differ in names"):
        ArrayData({"x": np.zeros(3)}, {"y": np.zeros(3)}, 1)
    with pytest.raises(ValueError, match="do not fill one global batch"):
        array_dataset(arrays(3), HostBatches(global_batch=4, seed=0))
