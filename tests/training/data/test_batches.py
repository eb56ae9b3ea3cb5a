"""HostBatches: every host forms the same global batches of row numbers and keeps its contiguous
block; finite epochs drop the tail that does not fill a global batch; a batch that does not split
over the hosts is refused."""

import numpy as np
import pytest

from polyformer.training.data import HostBatches, batch_iterator


def test_hosts_keep_contiguous_blocks_of_one_global_batch():
    # Two epochs of 10 rows make 3 whole batches of 6: the last 2 rows are dropped.
    whole = list(HostBatches(6, seed=1, num_epochs=2, process_index=0, process_count=1).of(10))
    assert len(whole) == 3 and all(len(b) == 6 for b in whole)
    assert np.bincount(np.concatenate(whole), minlength=10).max() == 2
    for host in range(3):
        plan = HostBatches(6, seed=1, num_epochs=2, process_index=host, process_count=3)
        assert plan.rows() == slice(2 * host, 2 * host + 2)
        np.testing.assert_array_equal(list(plan.of(10)), whole)  # the same global batches


def test_without_a_seed_rows_come_in_order_and_the_iterator_resumes():
    batches = batch_iterator(HostBatches(4, seed=None).of(10), prefetch=0)
    assert [next(batches).tolist() for _ in range(2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    state = batches.get_state()
    after = next(batches).tolist()
    resumed = batch_iterator(HostBatches(4, seed=None).of(10), prefetch=0)
    resumed.set_state(state)
    assert next(resumed).tolist() == after == [8, 9, 0, 1]


def test_a_global_batch_that_does_not_split_over_the_hosts_is_refused():
    with pytest.raises(ValueError, match="global_batch 5 does not split over 2 hosts"):
        HostBatches(5, seed=0, process_index=0, process_count=2).rows()
