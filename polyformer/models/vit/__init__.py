"""ViT: `ViTForImageClassification`, `ViTModel`, their config and conversion table; `FAMILY` is
its record in `polyformer.models.FAMILIES`."""

from polyformer.models.vit import convert
from polyformer.models.vit.config import ViTConfig
from polyformer.models.vit.family import FAMILY
from polyformer.models.vit.model import (
    BaseModelOutputWithPooling,
    ImageClassifierOutput,
    ViTForImageClassification,
    ViTModel,
    build,
)

__all__ = [
    "FAMILY",
    "BaseModelOutputWithPooling",
    "ImageClassifierOutput",
    "ViTConfig",
    "ViTForImageClassification",
    "ViTModel",
    "build",
    "convert",
]
