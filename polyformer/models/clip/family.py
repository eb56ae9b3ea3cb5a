"""CLIP's record in `polyformer.models.FAMILIES`."""

from polyformer.models.clip import convert
from polyformer.models.clip.config import CLIPConfig
from polyformer.models.clip.model import CLIPModel
from polyformer.models.clip.pipeline import ZeroShotImageClassificationPipeline
from polyformer.models.family import Family

FAMILY = Family(
    model_type="clip", config=CLIPConfig, build=CLIPModel, table=convert.table,
    pipelines={"zero-shot-image-classification": ZeroShotImageClassificationPipeline},
    objectives=("clip_contrastive",), command="zero-shot",
    try_command='zero-shot {model} IMAGE.jpg --labels "a photo of a cat,a photo of a dog"',
)  # fmt: skip
