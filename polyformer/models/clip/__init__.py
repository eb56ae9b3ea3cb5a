"""CLIP: `CLIPModel` (text and vision towers on the shared encoder), its config and conversion
table; `FAMILY` is its record in `polyformer.models.FAMILIES`."""

from polyformer.models.clip import convert
from polyformer.models.clip.config import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from polyformer.models.clip.family import FAMILY
from polyformer.models.clip.model import (
    CLIPModel,
    CLIPOutput,
    CLIPTextTransformer,
    CLIPVisionTransformer,
)

__all__ = [
    "FAMILY",
    "CLIPConfig",
    "CLIPModel",
    "CLIPOutput",
    "CLIPTextConfig",
    "CLIPTextTransformer",
    "CLIPVisionConfig",
    "CLIPVisionTransformer",
    "convert",
]
