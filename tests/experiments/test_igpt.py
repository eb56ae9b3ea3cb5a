"""iGPT on 8x8 digits: the histogram baseline and a 2-step run of the whole script at a tiny size
(pixels -> sequences: tests/training/data/test_vision.py)."""

import json
import math

import numpy as np

from benchmarks import harness
from experiments import igpt


def test_histogram_baseline():
    pixels = np.zeros((3, 64), np.int32)
    pixels[0] = 1
    probs = igpt.histogram_model(pixels, levels=4)  # counts (2, 1, 0, 0) + 1 at every position
    np.testing.assert_allclose(probs[5], [3 / 7, 2 / 7, 1 / 7, 1 / 7])
    bits = igpt.histogram_bits(probs, np.full((1, 64), 3))
    np.testing.assert_allclose(bits, math.log2(7))  # unseen, yet finite
    completions = igpt.histogram_completions(probs, pixels, samples=5, seed=0)
    assert completions.shape == (3, 5, 64)
    np.testing.assert_array_equal(completions[:, :, :32], np.repeat(pixels[:, None, :32], 5, 1))
    assert completions.min() >= 0 and completions.max() <= 3


def test_two_step_run_writes_every_output(tmp_path_factory, tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\nkept above\n\n{}\nold\n{}\n\nkept below\n".format(*igpt.MARKS))
    out = tmp_path / "run"
    tiny = ["model.n_embd=16", "model.n_layer=1", "model.n_head=2", "batch_size=8"]
    tiny += ["steps=2", "eval_batches=1", "log_every=1", f"out_dir={out}"]
    tiny += [f"data.data_dir={tmp_path_factory.mktemp('tfds')}"]
    argv = [arg for key in tiny for arg in ("--set", key)]
    info = igpt.main(
        [
            *argv,
            "--samples=2",
            "--show=3",
            f"--results={results}",
            f"--copies={tmp_path}",
            "--no-progress",
        ]
    )

    bpp = info["bits_per_pixel"]
    assert 0 < bpp["model"] < 2 * bpp["uniform"] and bpp["uniform"] == math.log2(17)
    assert bpp["histogram"] < bpp["uniform"]
    # The trainer's evaluation (same parameters, first 8 held-out images) is the same figure.
    trainer_bits = info["trainer_eval_loss"] / math.log(2)
    np.testing.assert_allclose(bpp["model_on_trainer_eval_images"], trainer_bits, rtol=1e-5)
    assert 0 <= info["digit_agreement"]["model_completion"] <= 1
    for name in ("completions.png", "igpt.json", "igpt.md", "metrics.jsonl"):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "igpt.json").read_text())["levels"] == 17
    text = results.read_text()
    assert "kept above" in text and "kept below" in text and "old" not in text
    assert text.count(igpt.MARKS[0]) == 1 and "bits per pixel" in text


def test_report_from_stored_quick_run_opens_the_recorded_section():
    """The section's figures come from the stored record; after them, RESULTS.md keeps only the
    hand-written paragraphs on the completions image."""
    stored = json.loads((igpt.COPIES / "igpt_quick.json").read_text())
    rendered = igpt.report(stored).strip("\n").removesuffix(igpt.MARKS[1])
    start, end = igpt.MARKS
    results = harness.RESULTS.read_text()
    recorded = start + results.split(start, 1)[1].split(end, 1)[0] + end
    assert recorded.startswith(rendered)
