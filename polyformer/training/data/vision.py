"""Data configs over the digit images: images for ViT, images with captions for CLIP, pixel
sequences for an Image GPT. Each is a frozen dataclass whose `load()` returns the `ArrayData` the
trainer reads.

The images come from the embedded TFDS dataset `sklearn_digits` (polyformer.datasets.digits),
built on first use; they go through the model family's own image processor, so the processor
saved beside an exported model computes exactly what the model was trained on. Training batches
are augmented by random translations, drawn per example from the generator that ArrayData seeds
with the run's seed and the step (a resumed run sees the same batches).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from polyformer.datasets import digits
from polyformer.training.data.arrays import ArrayData
from polyformer.training.data.sources import data_source


def random_shift(pixel_values: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Each image of `[batch, channels, height, width]` translated by its own random offset of
    up to `max_shift` pixels along each axis; the uncovered border repeats the edge pixels (the
    digits' background)."""
    if max_shift == 0:
        return pixel_values
    n, _, height, width = pixel_values.shape
    pad = ((0, 0), (0, 0), (max_shift, max_shift), (max_shift, max_shift))
    padded = np.pad(pixel_values, pad, mode="edge")
    top, left = rng.integers(0, 2 * max_shift + 1, (2, n))
    rows = (top[:, None] + np.arange(height))[:, :, None]
    cols = (left[:, None] + np.arange(width))[:, None, :]
    # Advanced indices around a slice put their axes first: [batch, height, width, channels].
    shifted = padded[np.arange(n)[:, None, None], :, rows, cols]
    return np.ascontiguousarray(shifted.transpose(0, 3, 1, 2))


def _check_sizes(image_size: int, max_shift: int) -> None:
    if image_size < 1 or not 0 <= max_shift < image_size:
        raise ValueError(
            f"image_size must be positive and max_shift in [0, image_size), got image_size="
            f"{image_size}, max_shift={max_shift}"
        )


def _records(dataset: str, split: str, data_dir: str | None) -> dict[str, np.ndarray]:
    """Every record of `split`, stacked per feature."""
    source = data_source(dataset, split, data_dir)
    rows = [source[i] for i in range(len(source))]
    return {key: np.stack([row[key] for row in rows]) for key in rows[0]}


def _shift_transform(max_shift: int):
    def transform(batch: dict[str, np.ndarray], rng: np.random.Generator):
        return dict(batch, pixel_values=random_shift(batch["pixel_values"], max_shift, rng))

    return transform


@dataclasses.dataclass(frozen=True)
class DigitImages:
    """Digit images and their labels for `ViTForImageClassification`: batches of
    "pixel_values" `[batch, 3, image_size, image_size]` float32 and "labels" `[batch]` int32.

    Attributes:
      dataset: a `sklearn_digits` config ("sklearn_digits/gray32" or ".../color32").
      image_size: the processor's output size; the model's image_size is set to it.
      patch_size: the model's patch size, used only to count patches (+ CLS) per image in the
        trainer's throughput.
      max_shift: training images are translated by up to this many pixels (0: no augmentation).
    """

    dataset: str = "sklearn_digits/gray32"
    data_dir: str | None = None
    image_size: int = 32
    patch_size: int = 8
    max_shift: int = 3

    def __post_init__(self):
        _check_sizes(self.image_size, self.max_shift)
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size {self.patch_size} does not divide {self.image_size}")

    def processor(self):
        from polyformer.models.vit.processing import ViTImageProcessor

        return ViTImageProcessor(size={"height": self.image_size, "width": self.image_size})

    def arrays(self, split: str) -> dict[str, np.ndarray]:
        """The whole of `split` ("train" or "validation"), unaugmented."""
        records = _records(self.dataset, split, self.data_dir)
        pixels = self.processor()(list(records["image"]))["pixel_values"]
        return {"pixel_values": pixels, "labels": records["label"].astype(np.int32)}

    def load(self) -> ArrayData:
        processor = self.processor()
        return ArrayData(
            self.arrays("train"),
            self.arrays("validation"),
            tokens_per_example=(self.image_size // self.patch_size) ** 2 + 1,
            model_overrides={
                "id2label": dict(enumerate(digits.DIGIT_WORDS)),
                "image_size": self.image_size,
                "num_channels": 3,
            },
            saver=processor.save_pretrained,
            transform=_shift_transform(self.max_shift),
        )


@dataclasses.dataclass(frozen=True)
class DigitCaptions:
    """Digit images with their captions for `CLIPModel`: batches of "input_ids" and
    "attention_mask" `[batch, max_length]` int32 and "pixel_values"
    `[batch, 3, image_size, image_size]` float32, row i's caption describing row i's image.

    The captions are tokenised by a CLIP-format BPE learned from every caption the dataset can
    produce (`tokenizer()`), so the text tower's vocabulary is a few hundred tokens, not CLIP's
    49408; `text_config(base)` gives the text tower that fits it. The model config cannot take
    these from the data (they are fields of the nested text config), so an experiment config
    builds its CLIPConfig with `text_config` and `load()` checks nothing about the model.

    Attributes:
      dataset: a `sklearn_digits` config with colors ("color4_32", "color32"); gray32 works
        too, its captions differing only in the digit.
      image_size: the processor's output size (the vision tower's image_size).
      patch_size: the vision tower's patch size, used only to count tokens for throughput.
      vocab_size: the BPE's requested size (it stops earlier when every word is one token).
      max_length: captions are padded to this many tokens.
      max_shift: training images are translated by up to this many pixels.
    """

    dataset: str = "sklearn_digits/color4_32"
    data_dir: str | None = None
    image_size: int = 32
    patch_size: int = 8
    vocab_size: int = 600
    max_length: int = 12
    max_shift: int = 2

    def __post_init__(self):
        _check_sizes(self.image_size, self.max_shift)

    def tokenizer(self):
        from polyformer.models.clip.tokenizer import CLIPTokenizer

        tokenizer = CLIPTokenizer.train(digits.all_captions(), self.vocab_size)
        tokenizer.model_max_length = self.max_length
        return tokenizer

    def processor(self):
        from polyformer.models.clip.processing import CLIPImageProcessor

        size = self.image_size
        return CLIPImageProcessor(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        )

    def text_config(self, base):
        """`base` (a CLIPTextConfig) with this tokenizer's vocabulary and special tokens."""
        tokenizer = self.tokenizer()
        return dataclasses.replace(
            base,
            vocab_size=tokenizer.tokenizer.get_vocab_size(),
            max_position_embeddings=self.max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )

    def arrays(self, split: str) -> dict[str, np.ndarray]:
        """The whole of `split` ("train" or "validation"), unaugmented, with "labels" (the
        digit), "foreground" and "background" (color indices into `digits.COLORS`) for
        zero-shot evaluation; `load()` leaves those out of the training batches."""
        records = _records(self.dataset, split, self.data_dir)
        captions = [c.decode() for c in records["caption"]]
        text = self.tokenizer()(captions, padding="max_length", max_length=self.max_length)
        return {
            **text,
            **self.processor()(list(records["image"])),
            "labels": records["label"].astype(np.int32),
            "foreground": records["foreground"].astype(np.int32),
            "background": records["background"].astype(np.int32),
        }

    def load(self) -> ArrayData:
        tokenizer, processor = self.tokenizer(), self.processor()
        keys = ("input_ids", "attention_mask", "pixel_values")

        def batch_arrays(split):
            arrays = self.arrays(split)
            return {key: arrays[key] for key in keys}

        def save(directory: str | os.PathLike) -> None:
            tokenizer.save_pretrained(directory)
            processor.save_pretrained(directory)

        return ArrayData(
            batch_arrays("train"),
            batch_arrays("validation"),
            tokens_per_example=(self.image_size // self.patch_size) ** 2 + 1 + self.max_length,
            saver=save,
            transform=_shift_transform(self.max_shift),
        )


PIXELS = 64  # the digits' 8x8


def quantise(values: np.ndarray, levels: int) -> np.ndarray:
    """Gray values 0..16 (any shape) -> int32 levels 0..levels-1, rounding to the nearest."""
    if not 2 <= levels <= digits.MAX_VALUE + 1:
        raise ValueError(f"levels must be in 2..{digits.MAX_VALUE + 1}, got {levels}")
    scaled = np.asarray(values, np.float64) * (levels - 1) / digits.MAX_VALUE
    return np.rint(scaled).astype(np.int32)


def dequantise(tokens: np.ndarray, levels: int) -> np.ndarray:
    """Levels 0..levels-1 -> gray values on the 0..16 scale (float32)."""
    return np.asarray(tokens, np.float32) * digits.MAX_VALUE / (levels - 1)


def to_sequences(pixels: np.ndarray, start_id: int) -> np.ndarray:
    """Quantised images `[n, 8, 8]` (or `[n, 64]`) -> int32 `[n, 65]`: the start token, then the
    pixels in raster order (row by row, left to right)."""
    flat = np.asarray(pixels, np.int32).reshape(len(pixels), PIXELS)
    start = np.full((len(flat), 1), start_id, np.int32)
    return np.concatenate([start, flat], axis=1)


@dataclasses.dataclass(frozen=True)
class DigitPixels:
    """scikit-learn's 8x8 digits as pixel sequences for `GPT2LMHeadModel` (Image GPT): batches of
    "inputs" (the start token, pixels 0..62) and "targets" (pixels 0..63), int32 `[batch, 64]`,
    so that every target is a pixel.

    Attributes:
      levels: gray levels, `round(v * (levels - 1) / 16)`; 17 is the identity (the images hold
        exactly 17 values). The vocabulary is the levels and the start token (id `levels`).
      dataset: a white-on-black `sklearn_digits` config at 8x8 ("sklearn_digits/gray8").
    """

    levels: int = digits.MAX_VALUE + 1
    dataset: str = "sklearn_digits/gray8"
    data_dir: str | None = None

    def __post_init__(self):
        quantise(np.zeros(1), self.levels)  # checks levels

    @property
    def start_id(self) -> int:
        return self.levels

    def sequences(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The images of `split` as int32 sequences `[n, 65]`, and their digits `[n]`."""
        records = _records(self.dataset, split, self.data_dir)
        pixels = quantise(digits.gray_values(records["image"]), self.levels)
        return to_sequences(pixels, self.start_id), records["label"].astype(np.int32)

    def load(self) -> ArrayData:
        def pairs(split: str) -> dict[str, np.ndarray]:
            sequences, _ = self.sequences(split)
            return {"inputs": sequences[:, :-1], "targets": sequences[:, 1:]}

        start = self.start_id
        return ArrayData(
            pairs("train"),
            pairs("validation"),
            tokens_per_example=PIXELS,
            model_overrides={
                "vocab_size": self.levels + 1,
                "bos_token_id": start,
                "eos_token_id": start,
            },
        )
