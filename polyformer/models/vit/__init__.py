"""ViT: `ViTForImageClassification`, `ViTModel`, their config and conversion table."""

from polyformer.models.vit import convert
from polyformer.models.vit.config import ViTConfig
from polyformer.models.vit.model import (
    BaseModelOutputWithPooling,
    ImageClassifierOutput,
    ViTForImageClassification,
    ViTModel,
    build,
)

__all__ = [
    "BaseModelOutputWithPooling",
    "ImageClassifierOutput",
    "ViTConfig",
    "ViTForImageClassification",
    "ViTModel",
    "build",
    "convert",
]
