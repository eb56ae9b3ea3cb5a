import json
import os
import time

import pytest

from benchmarks import harness


def test_machine_info_names_the_machine_and_the_libraries():
    info = harness.machine_info()
    assert info["cores"] == len(os.sched_getaffinity(0)) >= 1
    assert info["versions"]["python"].count(".") == 2
    assert set(harness.LIBRARIES) <= set(info["versions"])
    assert info["cpu"].startswith(info["cpu_name"])
    assert len(info["load_average_start"]) == 3
    assert info["date"].endswith("UTC")


def test_machine_summary_is_one_line():
    line = harness.machine_summary()
    assert f"{harness.cores()} cores (cpu); jax " in line and "\n" not in line


def test_versions_text_lists_python_first():
    info = {"versions": {"python": "3.11.7", "jax": "0.10.2", "torch": "2.13.0"}}
    text = harness.versions_text(info, ("jax", "torch"))
    assert text == "python 3.11.7, jax 0.10.2, torch 2.13.0"


def test_command_line_reruns_the_module():
    line = harness.command_line("benchmarks.gpt_benchmark", ["--quick", "--json", "a b.json"])
    assert line == ".venv/bin/python -m benchmarks.gpt_benchmark --quick --json 'a b.json'"


def test_timed_measures_wall_and_cpu():
    wall, cpu = harness.timed(lambda: time.sleep(0.05))
    assert wall >= 0.05
    assert cpu < wall


def test_rounds_rotate_the_order_and_record_every_call():
    calls = []
    contestants = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    samples = harness.run_rounds(contestants, 3, log=lambda _: None)
    assert calls == list("abcbcacab")
    assert len(samples.pop("load_1min")) == 3
    assert all(len(s["wall"]) == len(s["cpu"]) == 3 for s in samples.values())


@pytest.mark.parametrize("warm_up", [True, False])
def test_measure_warms_up_times_rounds_and_probes_the_peak(warm_up):
    calls = []
    contestants = {name: (lambda name=name: calls.append(name)) for name in ("ours", "theirs")}
    probes = iter(range(100))
    samples, loads, peaks = harness.measure(
        contestants, 3, log=lambda _: None, peak=lambda: float(next(probes)), warm_up=warm_up
    )
    assert calls.count("ours") == 3 + warm_up
    assert set(samples) == {"ours", "theirs"} and len(samples["ours"]["wall"]) == 3
    assert len(loads) == 3
    assert peaks == ([1.0, 2.0, 3.0] if warm_up else [0.0, 1.0, 2.0])  # warm-up probe dropped


def _summary(ours, anchor, target=0.8):
    samples = {
        "ours": {"wall": ours, "cpu": [2 * x for x in ours]},
        "transformers (2 threads)": {"wall": anchor, "cpu": [2 * x for x in anchor]},
        "transformers (1 thread)": {"wall": [2 * x for x in anchor], "cpu": anchor},
    }
    return harness.summarise({"samples": samples}, target)


def test_summarise_ratios_and_verdicts():
    s = _summary([1.0, 1.0, 4.0], [2.0, 1.0, 2.0])
    assert s["median_s"]["ours"] == {"wall": 1.0, "cpu": 2.0}
    assert s["fastest_anchor"] == "transformers (2 threads)"
    assert s["ratios"]["transformers (2 threads)"] == {
        "wall": 0.5,
        "cpu": 0.5,
        "paired_wall": 1.0,
    }
    assert s["met"] == {"transformers (2 threads)": True, "transformers (1 thread)": True}
    assert not _summary([3.0], [2.0])["met"]["transformers (2 threads)"]


def test_verdict_row_marks_the_fastest_anchor_and_a_miss():
    s = _summary([3.0], [2.0])
    row = harness.verdict_row("forward <= 0.8x", "transformers (2 threads)", s)
    assert row == (
        "| forward <= 0.8x | transformers (2 threads) (the faster here) | 1.50x (1.50x; CPU 1.50x)"
        " | **not met** |"
    )
    assert harness.verdict_row("t", "transformers (1 thread)", s).endswith("| met |")


def test_timing_rows_leave_ours_without_ratios():
    rows = harness.timing_rows(_summary([1.0], [2.0]))
    assert rows[0] == "| ours | 1.000 | 2.000 | 2.00 |  |  |"
    assert rows[1] == "| transformers (2 threads) | 2.000 | 4.000 | 2.00 | 0.50 | 0.50 |"


def test_thread_labels():
    assert harness.thread_label(1) == "transformers (1 thread)"
    assert harness.thread_label(8) == "transformers (8 threads)"
    assert harness.torch_thread_counts(1) == [1]
    assert harness.torch_thread_counts(4) == [4, 1]


def test_load_note_says_when_the_machine_was_shared():
    info = {"load_average_start": (0.5, 1, 2), "load_average_end": (1, 1, 1), "cores": 2}
    assert harness.load_note(info, [1.0, 1.5]).endswith("at or below the 2 cores.")
    assert "other work shared the machine" in harness.load_note(info, [1.0, 2.5])
    assert "1.00–2.50" in harness.load_note(info, [1.0, 2.5])


def test_render_fills_every_field_and_refuses_a_missing_one(tmp_path):
    template = tmp_path / "t.md"
    template.write_text("$start\n## $title: ${n}x, 100$$\n$end\n")
    text = harness.render(template, start="<a>", end="<b>", title="T", n=3)
    assert text == "<a>\n## T: 3x, 100$\n<b>\n"
    with pytest.raises(KeyError, match="title"):
        harness.render(template, start="", end="", n=3)


def test_write_section_replaces_only_its_section(tmp_path):
    path = tmp_path / "RESULTS.md"
    start, end = harness.marks("x")
    assert (start, end) == ("<!-- x:start -->", "<!-- x:end -->")
    harness.write_section(path, start, end, f"{start}\none\n{end}\n")
    assert path.read_text() == f"# Benchmark results\n\n{start}\none\n{end}\n"
    path.write_text(f"head\n{start}\nold\n{end}\ntail\n")
    harness.write_section(path, start, end, f"{start}\nnew\n{end}\n")
    assert path.read_text() == f"head\n{start}\nnew\n{end}\ntail\n"
    other = harness.marks("y")
    harness.write_section(path, *other, f"{other[0]}\ny\n{other[1]}")
    assert path.read_text().endswith(f"tail\n\n{other[0]}\ny\n{other[1]}\n")


def test_output_paths_quick_writes_nothing_unless_asked(tmp_path):
    class Args:
        quick, results, json = True, None, None

    assert harness.output_paths(Args, "x.json") == (None, None)
    Args.quick = False
    assert harness.output_paths(Args, "x.json") == (
        harness.RESULTS,
        harness.RESULTS.parent / "x.json",
    )
    Args.results, Args.json = tmp_path / "R.md", tmp_path / "o.json"
    assert harness.output_paths(Args, "x.json") == (tmp_path / "R.md", tmp_path / "o.json")


def test_publish_writes_json_and_section(tmp_path, capsys):
    marks = harness.marks("z")
    section = f"{marks[0]}\nbody\n{marks[1]}\n"
    harness.publish(section, {"a": 1}, tmp_path / "o.json", tmp_path / "R.md", marks, log=print)
    assert json.loads((tmp_path / "o.json").read_text()) == {"a": 1}
    assert "body" in (tmp_path / "R.md").read_text()
    assert "body" in capsys.readouterr().out


def test_md_table():
    assert harness.md_table(["a", "b"], [["1", "2"]]) == ["| a | b |", "|---|---|", "| 1 | 2 |"]
