import sys

import numpy as np
import pytest
from sklearn.datasets import load_digits

from polyformer.datasets import SklearnDigits
from polyformer.datasets import digits as d
from polyformer.datasets.embedded import split_of


def records(builder, split):
    source = builder.as_data_source(split=split)
    return [source[i] for i in range(len(source))]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def color(data_dir):
    builder = SklearnDigits(config="color32", data_dir=str(data_dir))
    builder.download_and_prepare()
    return {split: records(builder, split) for split in ("train", "validation")}


def test_every_digit_once_split_by_index_hash(color):
    digits = load_digits()
    assert len(color["train"]) + len(color["validation"]) == len(digits.images) == 1797
    assert 100 < len(color["validation"]) < 260  # about 10%
    for split, rows in color.items():
        for row in rows[:50]:
            index = _index_of(row, digits)
            assert split_of(str(index), 10) == split


def _index_of(row, digits) -> int:
    """The scikit-learn index of a record, found by repainting every image of its label."""
    fg, bg = d.COLORS[row["foreground"]], d.COLORS[row["background"]]
    for index in np.flatnonzero(digits.target == row["label"]):
        if d.colors_of(int(index), 8) == (fg, bg):
            painted = d.paint(d.upsample(digits.images[index], 32), fg, bg)
            if np.array_equal(painted, row["image"]):
                return int(index)
    raise AssertionError(f"no digit image gives the record {row['caption']!r}")


def test_images_are_painted_digits_and_captions_name_them(color):
    row = color["train"][0]
    assert row["image"].shape == (32, 32, 3) and row["image"].dtype == np.uint8
    fg, bg = d.COLORS[row["foreground"]], d.COLORS[row["background"]]
    assert fg != bg
    words = row["caption"].decode().split()
    assert words[2] == d.DIGIT_WORDS[row["label"]] and words[1] == fg and words[-2] == bg
    # The corners of every digit image are blank: background color.
    np.testing.assert_array_equal(row["image"][0, 0], d.PALETTE[bg])
    captions = {r["caption"] for r in color["train"]}
    assert len(captions) > 400  # of the 560 possible


def test_caption_space_and_color_draws():
    assert len(set(d.all_captions())) == 560 and len(set(d.all_captions(4))) == 120
    digit, fg, bg = d.caption_space(4)[37]
    assert d.all_captions(4)[37] == d.caption(digit, d.COLORS[fg], d.COLORS[bg])
    drawn = {d.colors_of(i, 4) for i in range(200)}
    assert len(drawn) == 12 and all(set(pair) <= set(d.COLORS[:4]) for pair in drawn)
    assert d.colors_of(5, 0) == ("white", "black")
    with pytest.raises(ValueError, match="num_colors"):
        d.colors_of(5, 1)


def test_caption_articles():
    assert d.caption(7, "red", "orange") == "a red seven on an orange background"
    assert d.caption(8, "orange", "white") == "an orange eight on a white background"


def test_upsample_keeps_the_ink_and_range():
    image = np.zeros((8, 8))
    image[2:6, 3:5] = 16
    ink = d.upsample(image, 32)
    assert ink.shape == (32, 32) and ink.min() >= 0.0 and ink.max() <= 1.0
    assert ink[16, 16] > 0.9 and ink[0, 0] == 0.0
    np.testing.assert_array_equal(d.paint(np.ones((2, 2)), "red", "blue")[0, 0], d.PALETTE["red"])


def test_gray_config_is_white_on_black(data_dir):
    builder = SklearnDigits(config="gray32", data_dir=str(data_dir))
    builder.download_and_prepare()
    row = builder.as_data_source(split="validation")[0]
    assert np.all(row["image"][..., 0] == row["image"][..., 2])
    assert row["caption"].decode().endswith("on a black background")
    assert "tensorflow" not in sys.modules
