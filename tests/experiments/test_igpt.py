"""iGPT on 8x8 digits: pixels -> sequences, the split, the data protocol, bits per pixel, and a
2-step run of the whole script at a tiny size."""

import json
import math

import numpy as np
import pytest

from experiments import igpt


@pytest.fixture(scope="module")
def data():
    return igpt.load_digits_data(17)


def test_quantise_levels():
    values = np.arange(17)
    np.testing.assert_array_equal(igpt.quantise(values, 17), values)  # 17: the identity
    eight = igpt.quantise(values, 8)
    assert eight.dtype == np.int32 and eight.min() == 0 and eight.max() == 7
    assert np.all(np.diff(eight) >= 0)
    np.testing.assert_allclose(igpt.dequantise(eight, 8), np.rint(values * 7 / 16) * 16 / 7)
    with pytest.raises(ValueError, match="levels"):
        igpt.quantise(values, 18)


def test_sequences_are_start_token_then_raster_order():
    images = np.arange(2 * 64).reshape(2, 8, 8) % 17
    sequences = igpt.to_sequences(images, start_id=17)
    assert sequences.shape == (2, 65) and sequences.dtype == np.int32
    assert np.all(sequences[:, 0] == 17)
    assert sequences[1, 1 + 8 * 3 + 5] == images[1, 3, 5]  # row 3, column 5


def test_split_is_fixed_disjoint_and_ten_percent(data):
    train, held = igpt.split_indices(1797)
    assert len(held) == 180 and len(train) == 1617
    assert not set(train) & set(held) and len(set(train) | set(held)) == 1797
    np.testing.assert_array_equal(held, igpt.split_indices(1797)[1])
    assert data.vocab_size == 18 and data.end_of_text_id == 17
    assert data.train.shape == (1617, 65) and data.heldout.shape == (180, 65)
    assert data.train[:, 1:].max() == 16


def test_train_iterator_resumes_and_shards(data):
    iterator = data.train_iterator(8, seed=3, shard_index=0, shard_count=1)
    first = next(iterator)
    assert first["inputs"].shape == first["targets"].shape == (8, 64)
    np.testing.assert_array_equal(first["inputs"][:, 1:], first["targets"][:, :-1])
    assert np.all(first["inputs"][:, 0] == data.end_of_text_id)
    state = iterator.get_state()
    second = next(iterator)
    resumed = data.train_iterator(8, seed=3, shard_index=0, shard_count=1)
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["targets"], second["targets"])
    halves = [next(data.train_iterator(4, 3, h, 2))["targets"] for h in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(halves), first["targets"])


def test_eval_batches_are_fixed(data):
    batches = data.eval_batches(32, 100)
    assert len(batches) == 180 // 32
    np.testing.assert_array_equal(batches[1]["targets"], data.heldout[32:64, 1:])


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


def test_two_step_run_writes_every_output(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text(
        f"# Results\n\nkept above\n\n{igpt.MARK_START}\nold\n{igpt.MARK_END}\n\nkept below\n"
    )
    out = tmp_path / "run"
    tiny = ["model.n_embd=16", "model.n_layer=1", "model.n_head=2", "batch_size=8"]
    tiny += ["steps=2", "eval_batches=1", "log_every=1", f"out_dir={out}"]
    argv = [arg for key in tiny for arg in ("--set", key)]
    info = igpt.main([*argv, "--samples=2", "--show=3", f"--results={results}", "--no-progress"])

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
    assert text.count(igpt.MARK_START) == 1 and "bits per pixel" in text
