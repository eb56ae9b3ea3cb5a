import numpy as np
import pytest
from flax import nnx

import polyformer as pf
from polyformer.datasets import digits
from polyformer.models.clip import CLIPTextConfig
from polyformer.models.clip.tokenizer import CLIPTokenizer
from polyformer.training import config as run_config
from polyformer.training import trainer
from polyformer.training.data.vision import (
    DigitCaptions,
    DigitImages,
    DigitPixels,
    dequantise,
    quantise,
    random_shift,
    to_sequences,
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def images(data_dir):
    return DigitImages(data_dir=data_dir).load()


@pytest.fixture(scope="module")
def captions(data_dir):
    return DigitCaptions(data_dir=data_dir)


def test_random_shift_moves_each_image_and_repeats_the_edges():
    pixels = np.zeros((2, 1, 5, 5), np.float32)
    pixels[:, 0, 2, 2] = 1.0
    pixels[:, 0, :, 0] = -1.0  # left edge
    shifted = random_shift(pixels, 2, np.random.default_rng(0))
    top, left = np.random.default_rng(0).integers(0, 5, (2, 2))
    for i in range(2):
        # Output pixel (r, c) reads input (r + top - 2, c + left - 2), clamped to the image.
        assert shifted[i, 0, 2 - (top[i] - 2), 2 - (left[i] - 2)] == 1.0
        assert shifted[i].sum() == pytest.approx(
            pixels[i, 0][np.clip(np.arange(5) + top[i] - 2, 0, 4)][
                :, np.clip(np.arange(5) + left[i] - 2, 0, 4)
            ].sum()
        )
    assert random_shift(pixels, 0, np.random.default_rng(0)) is pixels


def test_digit_images_for_the_classifier(images):
    train, held = images.train, images.eval
    assert train["pixel_values"].shape[1:] == (3, 32, 32)
    assert train["pixel_values"].dtype == np.float32 and train["labels"].dtype == np.int32
    assert len(train["labels"]) + len(held["labels"]) == 1797
    assert train["pixel_values"].min() == -1.0 and train["pixel_values"].max() == 1.0
    assert images.tokens_per_example == 17  # (32 / 8)^2 patches + CLS with patch_size 8
    assert images.model_overrides["id2label"][7] == "seven"
    assert images.model_overrides["image_size"] == 32
    first = next(images.train_iterator(8, seed=0, shard_index=0, shard_count=1))
    assert first["pixel_values"].shape == (8, 3, 32, 32)
    # Evaluation images are not augmented.
    np.testing.assert_array_equal(images.eval_batches(8, 1)[0]["pixel_values"],
                                  held["pixel_values"][:8])  # fmt: skip


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="max_shift"):
        DigitImages(max_shift=32)
    with pytest.raises(ValueError, match="patch_size"):
        DigitImages(patch_size=5)


def test_captions_are_tokenised_with_a_bpe_of_their_own(captions, tmp_path):
    arrays = captions.arrays("validation")
    tokenizer = captions.tokenizer()
    row = arrays["input_ids"][0]
    text = digits.caption(
        int(arrays["labels"][0]),
        digits.COLORS[arrays["foreground"][0]],
        digits.COLORS[arrays["background"][0]],
    )
    assert tokenizer.decode(row, skip_special_tokens=True) == text
    assert row[0] == tokenizer.bos_token_id and tokenizer.eos_token_id in row
    assert arrays["input_ids"].shape[1] == captions.max_length
    # Every caption is a few tokens: each word became one token.
    assert arrays["attention_mask"].sum(-1).max() <= 9
    config = captions.text_config(CLIPTextConfig())
    assert (
        config.vocab_size == tokenizer.tokenizer.get_vocab_size() == arrays["input_ids"].max() + 1
    )
    assert (config.bos_token_id, config.eos_token_id) == (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
    )
    captions.load().save(tmp_path)
    again = CLIPTokenizer.from_pretrained(tmp_path)
    np.testing.assert_array_equal(
        again([text], padding="max_length", max_length=captions.max_length)["input_ids"][0], row
    )
    assert (tmp_path / "preprocessor_config.json").is_file()


@pytest.mark.parametrize(
    "name, tiny",
    [
        # The same trainer path as CLIP's with a simpler model: heavy, to keep the suite short.
        pytest.param("vit_digits", ["model.num_hidden_layers=1", "model.hidden_size=16"],
                     marks=pytest.mark.heavy),
        ("clip_captions", ["model.vision_config.num_hidden_layers=1",
                           "model.text_config.num_hidden_layers=1"]),
    ],
)  # fmt: skip
def test_two_steps_of_each_config_export_the_model_they_trained(name, tiny, data_dir, tmp_path):
    """Trains through `polyformer train`'s path and checks that the exported checkpoint holds
    the trained parameters (a gathered model's numpy weights were once written untransposed)."""
    config = run_config.load(f"experiments/configs/{name}.py")
    overrides = [*tiny, "steps=2", "batch_size=8", "eval_batches=1", "log_every=1"]
    overrides += [f"out_dir={tmp_path}", f"data.data_dir={data_dir}"]
    config = run_config.apply_overrides(config, overrides)
    job = trainer.Trainer(config, config.data.load())
    result = job.run(progress=False)
    assert np.isfinite(result.train_loss) and np.isfinite(result.eval_loss)
    exported = pf.from_pretrained(trainer.export(job, tmp_path / "model"))
    trained = dict(nnx.to_flat_state(nnx.state(job.model(), nnx.Param)))
    for path, variable in nnx.to_flat_state(nnx.state(exported, nnx.Param)):
        np.testing.assert_array_equal(variable.get_value(), trained[path].get_value())


def test_quantise_levels():
    values = np.arange(17)
    np.testing.assert_array_equal(quantise(values, 17), values)  # 17: the identity
    eight = quantise(values, 8)
    assert eight.dtype == np.int32 and eight.min() == 0 and eight.max() == 7
    assert np.all(np.diff(eight) >= 0)
    np.testing.assert_allclose(dequantise(eight, 8), np.rint(values * 7 / 16) * 16 / 7)
    with pytest.raises(ValueError, match="levels"):
        quantise(values, 18)
    with pytest.raises(ValueError, match="levels"):
        DigitPixels(levels=1)


def test_sequences_are_start_token_then_raster_order():
    images = np.arange(2 * 64).reshape(2, 8, 8) % 17
    sequences = to_sequences(images, start_id=17)
    assert sequences.shape == (2, 65) and sequences.dtype == np.int32
    assert np.all(sequences[:, 0] == 17)
    assert sequences[1, 1 + 8 * 3 + 5] == images[1, 3, 5]  # row 3, column 5


def test_digit_pixels_are_the_digits_own_gray_values(data_dir):
    from sklearn.datasets import load_digits

    pixels = DigitPixels(data_dir=data_dir)
    train, train_labels = pixels.sequences("train")
    held, held_labels = pixels.sequences("validation")
    assert len(train) + len(held) == 1797 and 100 < len(held) < 260
    assert np.all(train[:, 0] == 17) and train[:, 1:].max() == 16
    # Every sequence is one of scikit-learn's images, exactly, with its label.
    digits_ = load_digits()
    images = {tuple(image.astype(np.int32).ravel()): label
              for image, label in zip(digits_.images, digits_.target, strict=True)}  # fmt: skip
    for sequence, label in zip(held, held_labels, strict=True):
        assert images[tuple(sequence[1:])] == label
    data = pixels.load()
    assert data.model_overrides == {"vocab_size": 18, "bos_token_id": 17, "eos_token_id": 17}
    batch = next(data.train_iterator(8, 0, 0, 1))
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    np.testing.assert_array_equal(data.eval_batches(32, 1)[0]["targets"], held[:32, 1:])
