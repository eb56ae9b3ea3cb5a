"""The speech-recognition experiment: error rates, training time, and a few steps of the whole
script at a tiny size."""

import json

import pytest

from experiments import asr_digits
from polyformer.datasets.spoken_digits import espeak_available


@pytest.mark.parametrize(
    "a, b, distance",
    [("", "", 0), ("abc", "abc", 0), ("abc", "", 3), ("", "ab", 2), ("kitten", "sitting", 3),
     ("3 7 A", "3 1 A", 1), ("3 7", "37", 1)],
)  # fmt: skip
def test_edit_distance(a, b, distance):
    assert asr_digits.edit_distance(a, b) == distance == asr_digits.edit_distance(b, a)


def test_error_rate_is_errors_over_reference_characters():
    assert asr_digits.error_rate(["3 7 A", "B"], ["3 1 A", "B 2"]) == pytest.approx(3 / 8)


def test_training_seconds_adds_up_logging_windows(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [
        {"step": 10, "split": "train", "loss": 1.0, "tokens_per_s": 100.0},
        {"step": 10, "split": "eval", "loss": 1.0},
        {"step": 20, "split": "train", "loss": 1.0, "tokens_per_s": 200.0},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    # 10 steps of 50 tokens at 100/s, then 10 more at 200/s.
    assert asr_digits.training_seconds(path, 50) == {10: 5.0, 20: 7.5}


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")
def test_quick_run(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYFORMER_DATA", str(tmp_path / "data"))
    results = tmp_path / "asr.md"
    summary = asr_digits.main(
        ["--quick", "--results", str(results), "--set", f"out_dir={tmp_path / 'run'}"]
    )
    assert [r["step"] for r in summary["checkpoints"]] == [2]
    for row in summary["checkpoints"]:
        assert row["symbol_error_rate"] >= 0.0 and row["seconds"] > 0
    assert summary["chunking"]["seconds"] > 1.0
    assert results.is_file() and results.with_suffix(".png").is_file()
    text = results.read_text()
    assert "CER" in text and "Command: `python -m experiments.asr_digits --quick" in text
    assert "$" not in text
    assert (tmp_path / "run" / "model" / "vocab.json").is_file()
