"""Images -> `pixel_values`, as transformers' image processors compute them (its PIL backend).

`ViTImageProcessor` reads and writes the checkpoint's preprocessor_config.json. Its steps, each
switched by the HF field of the same name: convert to RGB, resize with PIL (to a fixed
`{"height", "width"}`, or the shorter side to `{"shortest_edge"}` keeping the aspect ratio),
center-crop to `crop_size` (zero-padding an image smaller than the crop), rescale (1/255),
normalize with `image_mean` / `image_std`; then stack to `[batch, 3, height, width]` float32.
CLIP's processor is the same with other defaults (polyformer.models.clip.processing).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import PIL.ImageOps

from polyformer.checkpoint_io import read_json

PREPROCESSOR_CONFIG = "preprocessor_config.json"
IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)
# transformers' PILImageResampling values are PIL's own filter numbers.
RESAMPLING = {int(f): f for f in PIL.Image.Resampling}
# Keys of preprocessor_config.json that name things rather than change what is computed.
_METADATA = {"image_processor_type", "feature_extractor_type", "processor_class", "auto_map"}

Image = str | os.PathLike | PIL.Image.Image | np.ndarray


def image_list(images: Image | Sequence[Image]) -> tuple[list[Image], bool]:
    """(the images as a list, whether one image was given rather than a sequence)."""
    kinds = (str, os.PathLike, PIL.Image.Image, np.ndarray)
    single = isinstance(images, kinds)
    listed = [images] if single else images
    wrong = (
        [i for i in listed if not isinstance(i, kinds)]
        if isinstance(listed, list | tuple)
        else [listed]
    )
    if wrong:
        raise ValueError(
            "an image is a file path, a PIL image or a uint8 array [height, width, channels] "
            f"(images: one or a list of them), not a {type(wrong[0]).__name__}"
        )
    return list(listed), single


def load_image(image: str | os.PathLike | PIL.Image.Image) -> PIL.Image.Image:
    """An image file or PIL image as transformers' `load_image` (which its pipelines call) makes
    it: upright by its EXIF orientation, in RGB by PIL's conversion (which drops an alpha
    channel). Raises FileNotFoundError for a missing file, ValueError for one PIL cannot read."""
    if isinstance(image, PIL.Image.Image):
        return eight_bit(PIL.ImageOps.exif_transpose(image), "the image").convert("RGB")
    path = Path(image)
    if not path.is_file():
        raise FileNotFoundError(f"no image file {path}")
    try:
        with PIL.Image.open(path) as opened:
            return eight_bit(PIL.ImageOps.exif_transpose(opened), str(path)).convert("RGB")
    except PIL.Image.DecompressionBombError as e:
        raise ValueError(
            f"{path} has more pixels than PIL reads without a limit ({e}); downscale it first, "
            "or raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
        ) from e
    except (PIL.UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"cannot read {path} as an image: {e}") from e


def eight_bit(image: PIL.Image.Image, source: str) -> PIL.Image.Image:
    """`image` with its 16-bit integer ("I;16", "I") or float ("F") grey levels mapped to 8-bit
    ("L") by their real range: 0..65535 and 0..1 to 0..255. PIL's own conversion clips them
    instead (a 16-bit photo turns white, a float one black). Other modes are returned as they are.
    Raises ValueError for values outside those ranges, which have no meaning to map."""
    if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
        return image
    values = np.asarray(image, dtype=np.float64)
    high = 1.0 if image.mode == "F" else 65535.0
    low_seen, high_seen = (values.min(), values.max()) if values.size else (0.0, 0.0)
    if not (np.isfinite(values).all() and low_seen >= 0 and high_seen <= high):
        raise ValueError(
            f"{source}: a {image.mode} image with values from {low_seen} to {high_seen}; "
            f"expected 0 to {high:g} (convert it to 8-bit yourself)"
        )
    return PIL.Image.fromarray(np.round(values * (255 / high)).astype(np.uint8), mode="L")


def to_rgb(image: PIL.Image.Image | np.ndarray) -> np.ndarray:
    """`[height, width, 3]` uint8 RGB, as transformers' `convert_to_rgb` makes it: transparency
    composited onto white, grey repeated over the three channels.

    Takes a PIL image of any mode or a uint8 array `[height, width]` (grey), `[height, width, 1]`,
    `[height, width, 3]` (RGB) or `[height, width, 4]` (RGBA), channels last.
    """
    if isinstance(image, PIL.Image.Image):
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(PIL.Image.alpha_composite(white, rgba).convert("RGB"))
        return np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise ValueError(
            f"an image is a path, a PIL image or a numpy array, not a {type(image).__name__}"
        )
    channels = 1 if image.ndim == 2 else image.shape[-1]
    if image.ndim not in (2, 3) or channels not in (1, 3, 4) or min(image.shape[:2]) == 0:
        raise ValueError(
            f"an image array is [height, width] or [height, width, channels] with 1, 3 or 4 "
            f"channels last, got shape {image.shape}"
        )
    if image.dtype != np.uint8:
        raise ValueError(
            f"an image array holds uint8 pixel values 0..255, got {image.dtype}; convert a float "
            "image in [0, 1] with (image * 255).round().astype(np.uint8)"
        )
    if channels == 4:
        alpha = image[..., 3:] / 255
        return np.round(alpha * image[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    if channels == 1:
        return np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=-1)
    return image


def shortest_edge_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """(height, width) with the shorter side `shortest_edge` and the longer one scaled by the
    same factor, rounded down (torchvision's and transformers' rule)."""
    short, long = min(height, width), max(height, width)
    long = int(shortest_edge * long / short)
    return (long, shortest_edge) if width <= height else (shortest_edge, long)


def center_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The centre `[height, width, ...]` of `image` (`[H, W, ...]`); a side shorter than the crop
    is first zero-padded on both sides (the odd pixel before), as transformers does."""
    pads = []
    for side, crop in zip(image.shape[:2], (height, width), strict=True):
        missing = max(0, crop - side)
        pads.append((math.ceil(missing / 2), missing // 2))
    image = np.pad(image, pads + [(0, 0)] * (image.ndim - 2))
    top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
    return image[top : top + height, left : left + width]


@dataclasses.dataclass(frozen=True)
class ViTImageProcessor:
    """Images -> `{"pixel_values": [batch, 3, height, width] float32}`, equal to transformers'
    ViTImageProcessor (PIL backend) for the same preprocessor_config.json.

    Images are paths (read as transformers' `load_image` reads them), PIL images or uint8
    arrays channels last (see `to_rgb`). Every image is converted to RGB first, as transformers
    does with `do_convert_rgb=True`; its ViT processor without it fails on grey or RGBA images.
    """

    do_resize: bool = True
    size: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {"height": 224, "width": 224}
    )
    resample: int = int(PIL.Image.Resampling.BILINEAR)
    do_center_crop: bool = False
    crop_size: Mapping[str, int] | None = None
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = IMAGENET_STANDARD_MEAN
    image_std: tuple[float, ...] = IMAGENET_STANDARD_STD
    do_convert_rgb: bool | None = None

    # How transformers reads an int `size`: n x n (ViT) or the shorter side n (CLIP).
    default_to_square: ClassVar[bool] = True
    image_processor_type: ClassVar[str] = "ViTImageProcessor"

    def __post_init__(self):
        # Older files give sizes as one int, read as transformers reads them.
        size, crop = self.size, self.crop_size
        if isinstance(size, int):
            square = self.default_to_square
            size = {"height": size, "width": size} if square else {"shortest_edge": size}
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        for name, value in (("size", size), ("crop_size", crop)):
            if value is not None and not isinstance(value, Mapping):
                raise ValueError(
                    f"{name} must be an int, {{'height': H, 'width': W}} or "
                    f"{{'shortest_edge': S}}, got {value!r}"
                )
        crop = None if crop is None else dict(crop)
        object.__setattr__(self, "size", dict(size))
        object.__setattr__(self, "crop_size", crop)
        for name in ("image_mean", "image_std"):  # one number stands for all three channels
            value = getattr(self, name)
            value = (value,) * 3 if isinstance(value, int | float) else value
            object.__setattr__(self, name, tuple(map(float, value)))
        if self.do_resize and set(self.size) not in ({"height", "width"}, {"shortest_edge"}):
            raise ValueError(
                "size must be {'height': H, 'width': W} or {'shortest_edge': S}, "
                f"got {self.size}"
            )
        if self.do_center_crop and (crop is None or set(crop) != {"height", "width"}):
            raise ValueError(f"crop_size must be {{'height': H, 'width': W}}, got {self.crop_size}")
        if self.resample not in RESAMPLING:
            raise ValueError(
                f"resample must be one of PIL's filters {sorted(RESAMPLING)}, got {self.resample}"
            )
        if self.do_normalize and not (len(self.image_mean) == len(self.image_std) == 3):
            raise ValueError(
                f"image_mean and image_std need 3 values (R, G, B), got {self.image_mean} and "
                f"{self.image_std}"
            )
        if self.do_normalize and not all(math.isfinite(m) for m in self.image_mean):
            raise ValueError(f"image_mean must be finite, got {self.image_mean}")
        if self.do_normalize and not all(0 < s < math.inf for s in self.image_std):
            raise ValueError(f"image_std must be finite and > 0 (it divides), got {self.image_std}")
        if self.do_rescale and not 0 < self.rescale_factor < math.inf:
            raise ValueError(f"rescale_factor must be finite and > 0, got {self.rescale_factor}")

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> ViTImageProcessor:
        """From preprocessor_config.json's dict; a setting this class does not implement (e.g.
        `do_pad: true`) is an error rather than ignored."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unsupported = {
            k: v
            for k, v in config.items()
            if k not in fields | _METADATA and v not in (None, False)
        }
        if unsupported:
            raise ValueError(f"{cls.__name__} does not implement the settings {unsupported}")
        return cls(**{k: v for k, v in config.items() if k in fields and v is not None})

    def to_hf(self) -> dict[str, Any]:
        config = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return {**config, "image_processor_type": self.image_processor_type}

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> ViTImageProcessor:
        config = read_json(directory, PREPROCESSOR_CONFIG)
        try:
            return cls.from_hf(config)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{Path(directory) / PREPROCESSOR_CONFIG}: {e}") from e

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Writes preprocessor_config.json, which transformers' AutoImageProcessor reads."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_hf(), indent=2, sort_keys=True)
        (directory / PREPROCESSOR_CONFIG).write_text(text + "\n")

    def preprocess_one(self, image: Image) -> np.ndarray:
        """One image -> `[3, height, width]` float32."""
        if isinstance(image, (str, os.PathLike)):
            image = load_image(image)
        pixels = to_rgb(image)
        if self.do_resize:
            height, width = pixels.shape[:2]
            if "shortest_edge" in self.size:
                height, width = shortest_edge_size(height, width, self.size["shortest_edge"])
            else:
                height, width = self.size["height"], self.size["width"]
            resized = PIL.Image.fromarray(pixels).resize((width, height), RESAMPLING[self.resample])
            pixels = np.asarray(resized)
        if self.do_center_crop:
            pixels = center_crop(pixels, self.crop_size["height"], self.crop_size["width"])
        # Rescaling in float64 then rounding to float32 is transformers' order of operations.
        values = pixels * np.float64(self.rescale_factor) if self.do_rescale else pixels
        values = values.astype(np.float32)
        if self.do_normalize:
            mean = np.asarray(self.image_mean, np.float32)
            values = (values - mean) / np.asarray(self.image_std, np.float32)
        return values.transpose(2, 0, 1)

    def __call__(self, images: Image | Sequence[Image]) -> dict[str, np.ndarray]:
        """One image or a list -> `{"pixel_values": [batch, 3, height, width] float32}`. Images
        of different sizes need a fixed output size (a resize to height x width, or a crop)."""
        batch = [self.preprocess_one(image) for image in image_list(images)[0]]
        if not batch:
            raise ValueError("give at least one image")
        shapes = {b.shape for b in batch}
        if len(shapes) > 1:
            raise ValueError(
                f"the images came out in different sizes {sorted(shapes)}; resize them to one "
                "size (size={'height', 'width'}) or crop them (do_center_crop) to batch them"
            )
        return {"pixel_values": np.stack(batch)}
