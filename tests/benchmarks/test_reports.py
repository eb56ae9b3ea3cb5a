"""Every benchmark's report, rebuilt from the measurements it stored, is its RESULTS.md section."""

import importlib
import json

import pytest

from benchmarks import harness


def _compiled(m, d):
    return m.report(d["machine"], d["cells"])


def _gpt(m, d):
    rounds = (len(d["forward"]["round_loads"]), len(d["generate"]["round_loads"]))
    return m.report(d["machine"], d["forward"], d["generate"], d["flops"], rounds)


def _packing(m, d):
    return m.report(d["machine"], d["packing"])


def _tapas(m, d):
    return m.report(d["machine"], d["forward"], len(d["forward"]["round_loads"]))


def _training(m, d):
    return m.report(d["machine"], d["training"])


def _vision(m, d):
    rounds = len(next(iter(d["results"].values()))["round_loads"])
    return m.report(d["machine"], d["results"], rounds)


def _wav2vec2(m, d):
    return m.report(d["machine"], d["forward"])


@pytest.mark.parametrize(
    "name, report",
    [
        ("compiled_benchmark", _compiled),
        ("attention.compiled", _compiled),
        ("gpt_benchmark", _gpt),
        ("packing_benchmark", _packing),
        ("tapas_benchmark", _tapas),
        ("training_benchmark", _training),
        ("vision_benchmark", _vision),
        ("wav2vec2_benchmark", _wav2vec2),
    ],
)
def test_report_from_stored_measurements_is_the_recorded_section(name, report):
    """Module benchmarks.NAME stores its measurements in benchmarks/NAME.json, dots as "_"."""
    module = importlib.import_module(f"benchmarks.{name}")
    stored = json.loads((harness.RESULTS.parent / f"{name.replace('.', '_')}.json").read_text())
    start, end = module.MARKS
    results = harness.RESULTS.read_text()
    recorded = start + results.split(start, 1)[1].split(end, 1)[0] + end
    assert report(module, stored).strip("\n") == recorded
