"""CLIP: `CLIPModel` (text and vision towers on the shared encoder), its config and conversion
table."""

from polyformer.models.clip import convert
from polyformer.models.clip.config import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from polyformer.models.clip.model import (
    CLIPModel,
    CLIPOutput,
    CLIPTextTransformer,
    CLIPVisionTransformer,
)

__all__ = [
    "CLIPConfig",
    "CLIPModel",
    "CLIPOutput",
    "CLIPTextConfig",
    "CLIPTextTransformer",
    "CLIPVisionConfig",
    "CLIPVisionTransformer",
    "convert",
]
