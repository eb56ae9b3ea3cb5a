"""scikit-learn's 8x8 handwritten digits as RGB images with generated captions.

The 1797 images of `sklearn.datasets.load_digits` (gray values 0..16, shipped with scikit-learn,
nothing downloaded) are upsampled to `image_size` pixels (bicubic, PIL) and painted: the ink in a
foreground color over a background color. Every example carries its digit (`label`), its colors
and a caption that names all three, "a red seven on a blue background", so the same set serves
image classification (ViT) and image/caption contrastive training (CLIP).

Configs: `gray32` paints every digit white on black (captions then differ only in the digit);
`gray8` too, at the images' own 8x8, from which `gray_values` recovers the 0..16 values exactly.
`color32` draws the two colors per example from a palette of eight, seeded by the example's
index: 560 distinct captions. `color4_32` draws them from four (black, white, red, green): 120
captions, so that in a batch of 64 every image has about five others of the same two colors,
which only the digit tells apart; contrastive training then has to learn the digits (with eight
colors, a CLIP learns the colors first and the digits slowly). An example goes to validation
when a stable hash of its index says so, the same on every run and machine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from polyformer.datasets.embedded import EmbeddedBuilder, split_of

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Named colors far apart in RGB, so that a caption's color is recoverable from the pixels.
PALETTE: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 50, 170),
    "orange": (250, 140, 20),
}
COLORS = tuple(PALETTE)
MAX_VALUE = 16  # the digits' gray values are 0..16


@dataclasses.dataclass
class DigitsConfig(tfds.core.BuilderConfig):
    """`image_size`: side of the square RGB images. `num_colors`: per-example foreground and
    background colors drawn from the first `num_colors` of the palette (0: white on black).
    `validation_percent`: the share of examples, by index hash, that go to validation."""

    image_size: int = 32
    num_colors: int = len(PALETTE)
    validation_percent: int = 10


def caption(label: int, foreground: str, background: str) -> str:
    """The caption of an example: "a red seven on an orange background"."""
    ink, ground = (f"{_article(color)} {color}" for color in (foreground, background))
    return f"{ink} {DIGIT_WORDS[label]} on {ground} background"


def caption_space(num_colors: int = len(PALETTE)) -> list[tuple[int, int, int]]:
    """Every (digit, foreground, background) a config with `num_colors` colors can give, colors
    as indices into COLORS: 10 x n x (n - 1) of them (560 for the full palette)."""
    colors = range(num_colors)
    return [(d, f, b) for d in range(len(DIGIT_WORDS)) for f in colors for b in colors if f != b]


def all_captions(num_colors: int = len(PALETTE)) -> list[str]:
    """The captions of `caption_space(num_colors)`, in its order."""
    return [caption(d, COLORS[f], COLORS[b]) for d, f, b in caption_space(num_colors)]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def upsample(image: np.ndarray, size: int) -> np.ndarray:
    """Gray values 0..16 `[8, 8]` -> ink intensity in [0, 1] `[size, size]` float32, bicubic."""
    ink = Image.fromarray(np.asarray(image, np.float32) / MAX_VALUE, mode="F")
    return np.clip(np.asarray(ink.resize((size, size), Image.Resampling.BICUBIC)), 0.0, 1.0)


def gray_values(images: np.ndarray) -> np.ndarray:
    """White-on-black images `[..., side, side, 3]` of a config at the digits' own 8x8 (`gray8`,
    where nothing is resampled) -> their gray values 0..16, int32 `[..., side, side]`: the
    inverse of `paint`, exact because 255 / 16 levels lie far apart."""
    return np.rint(np.asarray(images)[..., 0] * (MAX_VALUE / 255.0)).astype(np.int32)


def paint(ink: np.ndarray, foreground: str, background: str) -> np.ndarray:
    """Ink intensity `[h, w]` in [0, 1] -> uint8 RGB `[h, w, 3]`, blending the two colors."""
    fg = np.asarray(PALETTE[foreground], np.float32)
    bg = np.asarray(PALETTE[background], np.float32)
    return np.rint(bg + ink[..., None] * (fg - bg)).astype(np.uint8)


def colors_of(index: int, num_colors: int) -> tuple[str, str]:
    """(foreground, background) of example `index`: two distinct colors of the palette's first
    `num_colors`, drawn from a generator seeded by the index alone; white on black for 0."""
    if num_colors == 0:
        return "white", "black"
    if not 2 <= num_colors <= len(COLORS):
        raise ValueError(f"num_colors must be 0 or in 2..{len(COLORS)}, got {num_colors}")
    rng = np.random.default_rng([0xD161, index])
    first, second = rng.choice(num_colors, 2, replace=False)
    return COLORS[first], COLORS[second]


def _config(name: str, num_colors: int, size: int = 32) -> DigitsConfig:
    kind = f"colors of {num_colors} per example" if num_colors else "white on black"
    description = f"{size}x{size} RGB, {kind}."
    return DigitsConfig(name=name, description=description, image_size=size, num_colors=num_colors)


class SklearnDigits(EmbeddedBuilder):
    """scikit-learn's digits, upsampled and painted, with captions."""

    BUILDER_CONFIGS = [
        _config("gray32", num_colors=0),
        _config("gray8", num_colors=0, size=8),
        _config("color32", num_colors=8),
        _config("color4_32", num_colors=4),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            # A raw uint8 tensor rather than tfds.features.Image, whose PNG codec needs
            # TensorFlow.
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=DIGIT_WORDS),
                    "foreground": tfds.features.ClassLabel(names=COLORS),
                    "background": tfds.features.ClassLabel(names=COLORS),
                    "caption": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing is downloaded: the images ship with scikit-learn.
        from sklearn.datasets import load_digits

        digits = load_digits()
        by_split = {"train": [], "validation": []}
        for index in range(len(digits.images)):
            split = split_of(str(index), self.builder_config.validation_percent)
            by_split[split].append(index)
        return {
            split: self._generate_examples(digits.images, digits.target, indices)
            for split, indices in by_split.items()
        }

    def _generate_examples(
        self, images: np.ndarray, labels: np.ndarray, indices: list[int]
    ) -> Iterator[tuple[int, dict]]:
        config = self.builder_config
        for index in indices:
            label = int(labels[index])
            foreground, background = colors_of(index, config.num_colors)
            ink = upsample(images[index], config.image_size)
            yield (
                index,
                {
                    "image": paint(ink, foreground, background),
                    "label": label,
                    "foreground": foreground,
                    "background": background,
                    "caption": caption(label, foreground, background),
                },
            )
