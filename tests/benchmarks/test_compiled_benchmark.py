"""The compiled-for-the-hardware benchmark: its runs are valid for every model and target, a
cell is compiled in a process of its own and kept, and the report names what did not fit."""

import json

import pytest

from benchmarks import compiled_benchmark as bench
from polyformer import targets
from polyformer.training import compile as compiling


@pytest.mark.parametrize("name", sorted(bench.MODELS))
def test_every_cell_s_run_lays_out_on_every_target(name):
    model = bench.MODELS[name]
    for target in bench.TARGETS:
        for variant in bench.VARIANTS:
            run = bench.run_config(model, target, variant)
            assert run.model.remat == bench.VARIANTS[variant]["remat"]
            assert run.batch_size == model.per_device * targets.get(target).num_devices
            shapes = compiling.data_shapes(run)
            assert shapes.tokens_per_example > 0 and shapes.arrays


def test_a_quick_run_compiles_its_cells_and_the_next_run_keeps_them(tmp_path, monkeypatch):
    results, figures = tmp_path / "RESULTS.md", tmp_path / "cells.json"
    argv = ["--quick", "--targets", "v5e-4", "--variants", "none"]
    bench.main([*argv, "--results", str(results), "--json", str(figures)])
    cells = json.loads(figures.read_text())["cells"]
    (cell,) = cells.values()
    assert cell["fits"] and cell["bytes_per_device"]["temp"] > 0 and cell["mfu_bound"] > 0
    assert "| GPT-2 tiny | v5e-4 | none | 1, 4, 1 |" in results.read_text()

    def refuse(*args):
        raise AssertionError("a measured cell was compiled again")

    monkeypatch.setattr(bench, "compile_cell", refuse)
    bench.main([*argv, "--json", str(figures)])


def test_the_report_marks_cells_that_do_not_fit_or_did_not_compile():
    fits = {
        "mesh": {"data": 1, "fsdp": 16, "tensor": 1},
        "bytes_per_device": {"arguments": 2**30, "outputs": 2**30, "temp": 20 * 2**30},
        "train_total_bytes": 21 * 2**30,
        "eval_peak_bytes": 2**30,
        "hbm_bytes_per_device": 16 * 2**30,
        "fits": False,
        "compile_seconds": 12.0,
        "roofline_step_seconds": 0.5,
        "mfu_bound": 0.25,
        # The TPU compiler refused the step: no program, so XLA counted nothing.
        "compiled_flops": 0.0,
        "bytes_accessed": 0.0,
        "date": "2026-12-05 08:00 UTC",
        "load_average": [1.0, 1.0, 1.0],
    }
    cells = {
        bench.key("GPT-2 XL", "v5e-16", "none"): fits,
        bench.key("GPT-2 XL", "v5e-16", "full"): {"error": "ValueError: no"},
    }
    info = {"command": "c", "cpu": "cpu", "cores": 2, "versions": {"python": "3", "jax": "0",
            "jaxlib": "0", "flax": "0"}}  # fmt: skip
    text = bench.report(info, cells)
    assert (
        "| GPT-2 XL | v5e-16 | none | 1, 16, 1 | 1.00 | 20.00 | 21.00 / 16.00 | **no** | 12 | "
        "refused | - |" in text
    )
    assert "| GPT-2 XL | v5e-16 | full | did not compile: ValueError: no |" in text
    # A refused cell written by `CompileReport.to_json` has no roofline (null) to print.
    refused = {**fits, "roofline_step_seconds": None, "mfu_bound": None}
    assert bench.summary(refused).endswith("fits False, compile 12 s, refused by the compiler")
