from benchmarks.attention import cells, report, runner

LENGTHS = (4096, 8192)


def _records(dense_s=1.0, fast_s=0.1, growth=2.0):
    """Dense quadratic; BigBird and FAVOR+ `growth` times slower at 8K than at 4K."""
    out = []
    for n in LENGTHS:
        scale = n / 4096
        for name, t, mem in (
            (cells.DENSE, dense_s * scale**2, 100 * scale),
            (cells.DPA, dense_s * scale**2, 400 * scale**2),
            (cells.BIGBIRD, fast_s * (growth if n == 8192 else 1), 5 * scale),
            (cells.FAVOR, fast_s * (growth if n == 8192 else 1), 5 * scale),
        ):
            record = runner.Record(name, n, times_s=[t], memory_measure="xla-static")
            record.static_temp_bytes = int(mem * 2**20)
            out.append(record)
    out.append(runner.Record(cells.TORCH, 8192, status="skipped", reason="mem-cap (big) at L=8192"))
    return out


def _config():
    return runner.Config(LENGTHS, (), 10.0, 0.0, 2**30, 3, 2, quick=True)


def test_formats():
    assert [report.fmt_len(n) for n in (512, 1024, 3072)] == ["512", "1K", "3K"]
    assert [report.fmt_ms(t) for t in (0.005, 0.05, 0.5)] == ["5.00", "50.0", "500"]
    assert [report.fmt_ratio(r) for r in (None, 2.345, 12.34)] == ["n/a", "2.35x", "12.3x"]


def test_growth_span_needs_4k_and_a_longer_length():
    assert report.growth_span((1024, 4096, 8192, 16384)) == (4096, 16384, 4.6)
    assert report.growth_span((4096, 8192)) == (4096, 8192, 2.3)
    assert report.growth_span((1024, 2048)) is None


def test_targets_give_verdicts_from_the_ratios():
    by_target = {t: (m, v) for t, m, v in report.targets(report.Table(_records()), _config())}
    speed = by_target[f"{cells.BIGBIRD} at 8K: >= 8x faster and >= 10x less memory than Dense"]
    assert speed == ("20.0x faster, 20.0x less memory (160.0x less than jax dpa, which "
                     "materialises L x L)", "met")  # fmt: skip
    quick = "time 4K -> 8K grows <= 2.3x (quick mode: 4K -> 8K instead of 4K -> 16K)"
    growth = f"{cells.FAVOR}: {quick}"
    assert by_target[growth] == ("2.00x", "met")
    slow = {t: v for t, _, v in report.targets(report.Table(_records(growth=3.0)), _config())}
    assert slow[growth] == "**not met**"
    assert by_target[f"{cells.BAND}: {quick}"] == ("n/a", "not measured")


def test_report_is_one_marked_section_with_every_part():
    records = _records()
    records[0].error_vs_reference, records[0].error_kind = 1e-7, "max abs"
    records[0].compile_s = 0.5
    info = {
        "cpu": "cpu",
        "cores": 2,
        "memory_gib": 8.0,
        "versions": dict.fromkeys(("python", "jax", "jaxlib", "torch", "numpy"), "1"),
        "torch_threads": 2,
        "date": "today",
        "load_average_start": (1, 1, 1),
        "load_average_end": (2, 2, 2),
        "wall_s": 5.0,
    }
    names = [cells.DENSE, cells.DPA, cells.BIGBIRD, cells.FAVOR, cells.TORCH]
    text = report.report(records, info, _config(), "python -m benchmarks.attention", names)
    start, end = report.MARKS
    assert text.startswith(start + "\n## Attention kernels") and text.endswith(end + "\n")
    for heading in (
        "### Forward time",
        "### Peak memory",
        "### Ours / anchor",
        "### Time growth 4K -> 8K",
        "### Targets",
        "### Accuracy at L=4K",
        "### Compile time (s)",
        "### Skipped cells",
    ):
        assert f"\n\n{heading}\n\n" in text, heading
    assert "### Forward + backward" not in text
    assert "| Dense | 1000 (1.0x) | 4000 (1.0x) |" in text
    assert "| torch SDPA (CPU) | 8K | skipped | mem-cap (big) at L=8192 |" in text
    assert "$" not in text
