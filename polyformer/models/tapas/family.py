"""TAPAS's record in `polyformer.models.FAMILIES`."""

from polyformer.models.family import Family
from polyformer.models.tapas import convert
from polyformer.models.tapas.config import TapasConfig
from polyformer.models.tapas.model import build
from polyformer.models.tapas.pipeline import TableQuestionAnsweringPipeline

FAMILY = Family(
    model_type="tapas", config=TapasConfig, build=build, table=convert.table,
    pipelines={"table-question-answering": TableQuestionAnsweringPipeline},
    objectives=("tapas",), command="table-qa", try_command='table-qa {model} TABLE.csv "QUESTION"',
)  # fmt: skip
