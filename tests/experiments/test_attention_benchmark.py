"""Smoke test of the attention benchmark: tiny lengths, a short budget, files in tmp_path."""

import json

from experiments import attention_benchmark as bench


def test_harness_writes_every_report(tmp_path):
    results = tmp_path / "RESULTS.md"
    old = f"{bench.MARK_START}\nold figures\n{bench.MARK_END}"
    results.write_text(f"# Results\n\nkept above\n\n{old}\n\nkept below\n")
    out = tmp_path / "out"
    result = bench.main(
        [
            "--lengths=128,256",
            "--backward-lengths=256",
            "--budget=15",
            "--k=2",
            f"--out={out}",
            f"--results={results}",
        ]
    )

    for name in ("attention_benchmark.json", "attention_benchmark.md", "attention_benchmark.png"):
        assert (out / name).stat().st_size > 0
    data = json.loads((out / "attention_benchmark.json").read_text())
    assert data["machine"]["cores"] >= 1
    # Every cell has a row at every length it is scheduled for: measured, or skipped with a reason.
    names = [c.name for c in bench.cells(full=True)]
    for record in data["records"]:
        assert record["status"] in ("ok", "skipped", "error")
        assert record["status"] == "ok" or record["reason"]
    rows = {(r["cell"], r["length"]) for r in data["records"]}
    for name in names:
        lengths = (256,) if name.endswith(bench.BWD) else (128, 256)
        assert all((name, n) in rows for n in lengths), name
    dense = [r for r in data["records"] if r["cell"] == bench.DENSE and r["status"] == "ok"]
    assert dense, "the Dense kernel must always run"
    assert dense[0]["error_vs_reference"] < 1e-5
    assert dense[0]["static_bytes"] > 0 and dense[0]["median_s"] > 0
    assert result["targets"]

    text = results.read_text()
    assert text.startswith("# Results\n\nkept above") and text.rstrip().endswith("kept below")
    assert "old figures" not in text and "### Targets" in text and "### Skipped cells" in text
    assert text.count(bench.MARK_START) == 1 and text.count(bench.MARK_END) == 1


def test_unavailable_kernel_is_a_skipped_row(tmp_path):
    def missing():
        raise ImportError("no such kernel yet")

    config = bench.Config(
        lengths=(128,),
        backward_lengths=(),
        budget_s=10.0,
        start=bench.time.perf_counter(),
        mem_cap_bytes=2**30,
        k_max=1,
        threads=1,
        quick=True,
    )
    cells = [bench.Cell("missing", missing), bench.Cell(bench.DENSE, bench._dense, quadratic=True)]
    records, _ = bench.run(config, cells, log=lambda s: None)
    by_name = {r.cell: r for r in records}
    assert by_name["missing"].status == "skipped"
    assert "no such kernel yet" in by_name["missing"].reason
    assert by_name[bench.DENSE].status == "ok"
