import time

import numpy as np
import pytest

from benchmarks.attention import cells, runner


def _config(**changes):
    fields = dict(
        lengths=(128,),
        backward_lengths=(),
        budget_s=10.0,
        start=time.perf_counter(),
        mem_cap_bytes=2**30,
        k_max=1,
        threads=1,
        quick=True,
    )
    return runner.Config(**(fields | changes))


def test_unavailable_kernel_is_a_skipped_row():
    def missing():
        raise ImportError("no such kernel yet")

    dense = cells.Cell(cells.DENSE, cells.dense, quadratic=True)
    selected = [cells.Cell("missing", missing), dense]
    records, info = runner.run(_config(), selected, log=lambda s: None)
    by_name = {r.cell: r for r in records}
    assert by_name["missing"].status == "skipped"
    assert "no such kernel yet" in by_name["missing"].reason
    assert by_name[cells.DENSE].status == "ok"
    assert by_name[cells.DENSE].error_kind == "max abs"
    assert info["torch_threads"] == 1 and len(info["load_average_end"]) == 3


def test_a_cell_past_the_budget_is_skipped_at_every_longer_length():
    selected = [cells.Cell(cells.DENSE, cells.dense, quadratic=True)]
    config = _config(lengths=(64, 128), budget_s=0.0)
    records, _ = runner.run(config, selected, log=lambda s: None)
    assert [r.status for r in records] == ["skipped", "skipped"]
    assert records[0].reason.startswith("budget")


def test_reference_is_softmax_attention_under_the_mask():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 5, 2, 3)) for _ in range(3))
    only_first = np.zeros((5, 5), bool)
    only_first[:, 0] = True
    out = runner.reference(q, k, v, only_first)
    np.testing.assert_allclose(out, np.broadcast_to(v[:, :1], out.shape))
    full = runner.reference(q, k, v, None)
    weights = np.exp(np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(3))
    weights /= weights.sum(-1, keepdims=True)
    np.testing.assert_allclose(full, np.einsum("bhqk,bkhd->bqhd", weights, v))


@pytest.mark.parametrize(("quadratic", "expected"), [(True, 0.1 * 4.0), (False, 0.1 * 2.0**1.3)])
def test_predicted_time_scales_the_last_measurement(quadratic, expected):
    cell = cells.Cell("c", cells.dense, quadratic=quadratic)
    assert runner.predict_time(cell, 256, {}) is None
    assert runner.predict_time(cell, 256, {"c": (128, 0.1)}) == pytest.approx(expected)


def test_timed_calls_are_about_a_second_of_timing():
    assert runner.k_for(0.01, 5) == 5
    assert runner.k_for(0.4, 5) == 2
    assert runner.k_for(3.0, 5) == 2
    assert runner.k_for(0.01, 1) == 1


def test_predicted_bytes_prefer_the_static_figure():
    cell = cells.Cell("c", cells.dense, quadratic=True)
    measured = runner.Record("c", 128, rss_peak_bytes=1000)
    assert runner.predict_bytes(cell, 256, [measured]) == 4000
    compiled = runner.Record("c", 256, static_temp_bytes=10, static_output_bytes=2)
    assert runner.predict_bytes(cell, 256, [measured, compiled]) == 12


def test_record_json_carries_the_derived_figures():
    r = runner.Record("c", 128, times_s=[3.0, 1.0, 2.0], memory_measure="xla-static")
    r.static_temp_bytes = 5
    d = r.as_json()
    assert (d["median_s"], d["min_s"], d["static_bytes"], d["peak_bytes"]) == (2.0, 1.0, 5, 5)
