import json
from pathlib import Path

import pytest

from experiments import vision_eval

RESULTS = Path(vision_eval.__file__).parent / "results"


@pytest.fixture
def stored():
    return json.loads((RESULTS / "vision_training.json").read_text())


def test_report_from_the_stored_run_is_the_recorded_one(stored):
    assert vision_eval.report(stored) == (RESULTS / "vision_training.md").read_text()


def test_report_of_one_run_says_what_was_not_timed(stored):
    del stored["clip"], stored["vit_timing"]
    text = vision_eval.report(stored)
    assert "### ViT" in text and "### CLIP" not in text
    assert "Training: not timed (run with --train)." in text
    assert text.endswith("9: 100.0%.\n")
    stored["vit_timing"] = {"resumed_from_step": 400, "seconds": 90.0}
    assert "resumed at step 400, so not timed from the start (1.5 min" in vision_eval.report(stored)
