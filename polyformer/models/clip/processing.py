"""CLIP's image processor: the shorter side resized to 224 (bicubic), a 224 x 224 centre crop,
OpenAI's mean and standard deviation."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

import PIL.Image

from polyformer.models.vit.processing import ViTImageProcessor

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class CLIPImageProcessor(ViTImageProcessor):
    """Images -> `{"pixel_values": [batch, 3, 224, 224] float32}`, equal to transformers'
    CLIPImageProcessor (PIL backend): `ViTImageProcessor`'s steps with CLIP's defaults."""

    size: Mapping[str, int] = dataclasses.field(default_factory=lambda: {"shortest_edge": 224})
    resample: int = int(PIL.Image.Resampling.BICUBIC)
    do_center_crop: bool = True
    crop_size: Mapping[str, int] | None = dataclasses.field(
        default_factory=lambda: {"height": 224, "width": 224}
    )
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    do_convert_rgb: bool | None = True

    default_to_square: ClassVar[bool] = False
    image_processor_type: ClassVar[str] = "CLIPImageProcessor"
