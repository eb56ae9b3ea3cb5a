"""Attention compiled for the hardware: a quick run compiles its cells for a TPU and a GPU and
keeps them, and the report's verdicts follow the cells."""

import json

from benchmarks.attention import cells
from benchmarks.attention import compiled as bench


def test_a_quick_run_compiles_its_cells_and_the_next_run_keeps_them(tmp_path, monkeypatch):
    results, figures = tmp_path / "RESULTS.md", tmp_path / "cells.json"
    argv = ["--quick", "--lengths", "1024", "--kernels", "longformer", "--json", str(figures)]
    bench.main([*argv, "--results", str(results)])
    measured = json.loads(figures.read_text())["cells"]
    assert len(measured) == 4  # two targets, two modes
    for target, block in (("v5e-4", 128), ("h100x8", 64)):
        forward = measured[bench.key(cells.LONGFORMER, target, 1024, bench.FWD)]
        assert forward["pallas"] and forward["temp_bytes"] >= 0
        assert forward["memory_bytes"] >= 1024 * 16 * 128 * 2  # the output
        assert forward["fraction"] == forward["memory_bytes"] / (16 * 1024 * 1024 * 2)
        assert forward["blocks"]["equal"] and forward["blocks"]["block"] == block
        backward = measured[bench.key(cells.LONGFORMER, target, 1024, bench.FWD_BWD)]
        assert backward["output_bytes"] >= 3 * 1024 * 16 * 128 * 2  # dq, dk, dv
    text = results.read_text()
    assert text.count("attention-compiled:start") == 1
    assert "| Longformer (w 512, global [0]) | fwd | yes |" in text
    assert "v5e-4: Longformer (w 512, global [0]), blocks visited" in text

    def refuse(*args):
        raise AssertionError("a measured cell was compiled again")

    monkeypatch.setattr(bench, "compile_cell", refuse)
    bench.main(argv)


def cell(fraction: float, **extra) -> dict:
    score = 16 * 65536 * 65536 * 2
    return {
        "compile_seconds": 10.0,
        "memory_bytes": int(fraction * score),
        "fraction": fraction,
        "pallas": True,
        "flops": None,
        "bytes_accessed": None,
        "date": "2026-12-05 08:00 UTC",
        "load_average": [1.0, 1.0, 1.0],
        **extra,
    }


def test_the_report_judges_the_targets_at_64k():
    blocks = {"block": 512, "visited": 3584, "kept": 3584, "grid": 16384, "equal": True}
    measured = {
        bench.key(cells.LONGFORMER, "v5e-4", 65536, bench.FWD): cell(1 / 500, blocks=blocks),
        bench.key(cells.LONGFORMER, "v5e-4", 65536, bench.FWD_BWD): cell(1 / 49),
        bench.key(cells.BIGBIRD, "v5e-4", 65536, bench.FWD): {"error": "ValueError: no"},
        bench.key(cells.BIGBIRD, "v5e-4", 65536, bench.FWD_BWD): cell(1 / 50),
    }
    info = {"command": "c", "cpu": "cpu", "cores": 2, "versions": {"python": "3", "jax": "0",
            "jaxlib": "0", "flax": "0"}}  # fmt: skip
    text = bench.report(info, measured)
    name = cells.LONGFORMER
    assert f"| {name} | fwd | yes | 262 MiB (1/500) |" in text
    assert f"| v5e-4: {name} fwd at 64K compiles, ≤ 1/50 of the score matrix | 262 MiB" in text
    assert "(1/49.0) | **not met** |" in text and "(1/50.0) | met |" in text
    assert "did not compile: ValueError: no | **not met** |" in text
    assert "64K: 3,584 = 3,584 of 16,384 (block 512) | met |" in text
    assert f"| v5e-4: {cells.BIGBIRD}, blocks visited = the pattern's kept blocks | - |" in text
    assert "not reported by this target's compiler" in text
