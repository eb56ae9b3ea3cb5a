import numpy as np

from benchmarks.attention import cells


def test_full_grid_adds_backward_cells_only():
    quick, full = cells.cells(full=False), cells.cells(full=True)
    names = [c.name for c in full]
    assert len(set(names)) == len(names)
    assert [c.name for c in quick] == names[: len(quick)]
    assert all(c.backward and c.name.endswith(cells.BWD) for c in full[len(quick) :])
    assert {c.name for c in full if c.framework == "torch"} == {cells.TORCH}


def test_factories_build_what_the_accuracy_check_needs():
    by_name = {c.name: c for c in cells.cells(full=True)}
    band = by_name[cells.BAND].factory()
    assert band.exact and band.mask(1024).sum(1).max() == 2 * 256 + 1
    favor = by_name[cells.FAVOR_CAUSAL].factory()
    assert not favor.exact
    np.testing.assert_array_equal(favor.mask(3), np.tril(np.ones((3, 3), bool)))
    assert by_name[cells.DENSE].factory().mask is None
    assert by_name[cells.DENSE].memory_measure == "xla-static"
    assert by_name[cells.TORCH].memory_measure == "rss-hwm"
