"""GPT-2's record in `polyformer.models.FAMILIES`."""

from polyformer.models.family import Family
from polyformer.models.gpt import convert
from polyformer.models.gpt.config import GPT2Config
from polyformer.models.gpt.model import GPT2LMHeadModel
from polyformer.models.gpt.pipeline import TextGenerationPipeline

FAMILY = Family(
    model_type="gpt2", config=GPT2Config, build=GPT2LMHeadModel, table=convert.table,
    pipelines={"text-generation": TextGenerationPipeline}, objectives=("causal_lm",),
    command="generate", try_command='generate {model} "def "',
)  # fmt: skip
