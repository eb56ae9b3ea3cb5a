"""Smoke test of the attention benchmark: tiny lengths, files in tmp_path. The budget is long
enough for every cell on a loaded 2-core machine; unloaded, the run takes a few seconds."""

import json

from benchmarks.attention import __main__ as bench
from benchmarks.attention import cells, report


def test_main_writes_every_report(tmp_path):
    start, end = report.MARKS
    results = tmp_path / "RESULTS.md"
    results.write_text(f"# Results\n\nkept above\n\n{start}\nold figures\n{end}\n\nkept below\n")
    out = tmp_path / "out"
    result = bench.main(
        [
            "--lengths=128,256",
            "--backward-lengths=256",
            "--budget=120",
            "--k=2",
            f"--out={out}",
            f"--results={results}",
        ]
    )

    for name in ("attention_benchmark.json", "attention_benchmark.md", "attention_benchmark.png"):
        assert (out / name).stat().st_size > 0
    data = json.loads((out / "attention_benchmark.json").read_text())
    assert data["machine"]["cores"] >= 1
    assert data["command"].startswith("python -m benchmarks.attention --lengths=128,256")
    # Every cell has a row at every length it is scheduled for: measured, or skipped with a reason.
    names = [c.name for c in cells.cells(full=True)]
    for record in data["records"]:
        assert record["status"] in ("ok", "skipped", "error")
        assert record["status"] == "ok" or record["reason"]
    rows = {(r["cell"], r["length"]) for r in data["records"]}
    for name in names:
        lengths = (256,) if name.endswith(cells.BWD) else (128, 256)
        assert all((name, n) in rows for n in lengths), name
    dense = [r for r in data["records"] if r["cell"] == cells.DENSE and r["status"] == "ok"]
    assert dense, "the Dense kernel must always run"
    assert dense[0]["error_vs_reference"] < 1e-5
    assert dense[0]["static_bytes"] > 0 and dense[0]["median_s"] > 0
    assert result["targets"]

    text = results.read_text()
    assert text.startswith("# Results\n\nkept above") and text.rstrip().endswith("kept below")
    assert "old figures" not in text and "### Targets" in text and "### Skipped cells" in text
    assert text.count(start) == 1 and text.count(end) == 1
    assert (out / "attention_benchmark.md").read_text() in text
