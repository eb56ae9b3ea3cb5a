"""ViT's record in `polyformer.models.FAMILIES`."""

from polyformer.models.family import Family
from polyformer.models.vit import convert
from polyformer.models.vit.config import ViTConfig
from polyformer.models.vit.model import build
from polyformer.models.vit.pipeline import ImageClassificationPipeline

FAMILY = Family(
    model_type="vit", config=ViTConfig, build=build, table=convert.table,
    pipelines={"image-classification": ImageClassificationPipeline},
    objectives=("image_classification", "image_classification_mixup"),
    command="classify", try_command="classify {model} IMAGE.jpg",
)  # fmt: skip
