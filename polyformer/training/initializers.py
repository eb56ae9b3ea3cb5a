"""Where a run's weights start: a run config's `model_init` (None: the family's random
initialisation with the run's seed).

A model init is a frozen dataclass whose fields `--set model_init.FIELD=...` overrides and whose
`load(model_config)` returns the model to start from, built for the run's own model config (its
attention kernel, precision and the sizes the data decides), so its parameter tree is the one the
trainer shards and checkpoints.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from flax import nnx

from polyformer.models import tapas


@runtime_checkable
class ModelInit(Protocol):
    def load(self, model_config: Any) -> nnx.Module:
        """The model the run starts from, built from `model_config`."""
        ...


@dataclasses.dataclass(frozen=True)
class FromBert:
    """A TAPAS model whose embeddings, encoder and pooler are the BERT checkpoint at `path`
    (`tapas.from_bert`); the TAPAS heads and token-type tables start as from_bert leaves them.
    Pair it with `TableQuestionsData(vocabulary=path)`, whose tokenizer reads the same vocab.txt
    and adds [EMPTY] after it."""

    path: str

    def __post_init__(self):
        if not (Path(self.path) / "config.json").is_file():
            raise FileNotFoundError(
                f"model_init.path={self.path!r}: no config.json there (a BERT checkpoint "
                "directory is expected)"
            )

    def load(self, model_config: tapas.TapasConfig) -> nnx.Module:
        if not isinstance(model_config, tapas.TapasConfig):
            raise ValueError(
                f"FromBert starts TAPAS models; the run's model is a {type(model_config).__name__}"
            )
        return tapas.from_bert(self.path, model_config)
