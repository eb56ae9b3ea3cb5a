"""TAPAS: `TapasForQuestionAnswering` and `TapasModel`, their config, conversion table, the TAPAS
loss and `from_bert` (a TAPAS model whose encoder starts from a BERT checkpoint); `FAMILY` is
its record in `polyformer.models.FAMILIES`."""

from polyformer.models.family import Family
from polyformer.models.tapas import convert, loss, segments
from polyformer.models.tapas.config import TOKEN_TYPES, TapasConfig
from polyformer.models.tapas.convert import from_bert
from polyformer.models.tapas.loss import tapas_loss
from polyformer.models.tapas.model import (
    BaseModelOutput,
    TableQuestionAnsweringOutput,
    TapasForQuestionAnswering,
    TapasModel,
    build,
)
from polyformer.models.tapas.pipeline import TableQuestionAnsweringPipeline

FAMILY = Family(
    model_type="tapas",
    config=TapasConfig,
    build=build,
    table=convert.table,
    pipelines={"table-question-answering": TableQuestionAnsweringPipeline},
    objectives=("tapas",),
    command="table-qa",
    try_command='table-qa {model} TABLE.csv "QUESTION"',
)

__all__ = [
    "FAMILY",
    "TOKEN_TYPES",
    "BaseModelOutput",
    "TableQuestionAnsweringOutput",
    "TapasConfig",
    "TapasForQuestionAnswering",
    "TapasModel",
    "build",
    "convert",
    "from_bert",
    "loss",
    "segments",
    "tapas_loss",
]
