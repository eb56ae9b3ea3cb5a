"""TAPAS: `TapasForQuestionAnswering` and `TapasModel`, their config, conversion table, the TAPAS
loss and `from_bert` (a TAPAS model whose encoder starts from a BERT checkpoint); `FAMILY` is
its record in `polyformer.models.FAMILIES`."""

from polyformer.models.tapas import convert, loss, segments
from polyformer.models.tapas.config import TOKEN_TYPES, TapasConfig
from polyformer.models.tapas.convert import from_bert
from polyformer.models.tapas.family import FAMILY
from polyformer.models.tapas.loss import tapas_loss
from polyformer.models.tapas.model import (
    BaseModelOutputWithPooling,
    TableQuestionAnsweringOutput,
    TapasForQuestionAnswering,
    TapasModel,
    build,
)

__all__ = [
    "FAMILY",
    "TOKEN_TYPES",
    "BaseModelOutputWithPooling",
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
