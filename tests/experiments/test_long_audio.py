"""Long-audio experiment: the comparison and a --quick run of the whole script."""

import json
from pathlib import Path

import numpy as np
import pytest

from experiments import long_audio

RESULTS = Path(long_audio.__file__).parent / "results"


def test_compare():
    reference = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]])
    logits = np.array([[2.0, 0.0], [1.0, 1.0], [1.0, 3.0]])
    got = long_audio.compare(reference, logits)
    assert got["cosine_min"] == pytest.approx(0.6)  # frame 2: (3 + 3) / 10
    assert got["cosine"] == pytest.approx((1.0 + 2 / (2 * 2**0.5) + 0.6) / 3)
    assert got["max_abs_diff"] == 2.0
    assert got["argmax_agreement"] == pytest.approx(1 / 3)  # the tie [1, 1] goes to 0


def test_audio_is_normalised_and_as_long_as_asked():
    audio = long_audio.audio_of(0.5)
    assert audio.shape == (1, 8000) and audio.dtype == np.float32
    assert abs(audio.mean()) < 1e-4 and abs(audio.std() - 1.0) < 1e-3


def test_quick_run(tmp_path):
    results = tmp_path / "long_audio.md"
    rows = long_audio.main(["--quick", "--results", str(results)])
    assert [(r["seconds"], r["kernel"]) for r in rows] == [
        (1.0, k) for k in ("Dense", "Sparse(band(16))", "Favor(16)")
    ]
    assert rows[0]["cosine"] == 1.0 and rows[0]["max_abs_diff"] == 0.0  # Dense against itself
    assert all(r["temp_bytes"] > r["attention_temp_bytes"] > 0 and r["wall_s"] > 0 for r in rows)
    assert [r["frames"] for r in rows] == [799] * 3
    text = results.read_text()
    assert "| 1 s | 799 | Favor(16) |" in text
    assert "Command: `.venv/bin/python -m experiments.long_audio --quick --results " in text
    assert json.loads(results.with_suffix(".json").read_text())["rows"] == rows


def test_report_from_the_stored_run_is_the_recorded_one():
    """The recorded report is the generated one plus a reading written by hand below it."""
    stored = json.loads((RESULTS / "long_audio.json").read_text())
    generated = long_audio.report(stored["rows"], stored["info"])
    assert (RESULTS / "long_audio.md").read_text().startswith(generated + "\n## Reading")
