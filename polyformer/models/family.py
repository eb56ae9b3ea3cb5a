"""`Family`: everything the rest of polyformer needs to know about one model family.

Each family's `family.py` defines one `FAMILY`, which its `__init__.py` exports;
`polyformer.models.FAMILIES` lists them by `model_type`, and hub, pipelines, the CLI and the
trainer read that one list.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from flax import nnx

from polyformer.models.convert import Table


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family.

    Attributes:
      model_type: config.json's `model_type` for the family (its key in FAMILIES).
      config: the config class; `config.from_hf(dict)` reads config.json, `config.to_hf()`
        writes it.
      build: `build(config, *, rngs)` makes the model config.json's `architectures` names.
      table: `table(config)` is the conversion table for that configuration.
      pipelines: task name (as Hugging Face names it) -> pipeline class; each has
        `from_model(model, directory)`, the directory holding its tokenizer or processor files,
        and, for the CLI, COMMAND_HELP, CHECKPOINT_HELP, `add_arguments(parser)` and
        `run_command(args)`.
      objectives: names in `polyformer.training.objectives.OBJECTIVES` that train the family;
        the first is the default.
      command: the `polyformer` subcommand that runs the family's first pipeline on a checkpoint.
      try_command: that command's arguments for an exported model, `{model}` its directory.
    """

    model_type: str
    config: type
    build: Callable[..., nnx.Module]
    table: Callable[[Any], Table]
    pipelines: Mapping[str, type]
    objectives: tuple[str, ...]
    command: str
    try_command: str

    def __post_init__(self):
        if self.config.model_type != self.model_type:
            raise ValueError(
                f"family {self.model_type!r} has a config of model_type {self.config.model_type!r}"
            )
        if not self.objectives:
            raise ValueError(f"family {self.model_type!r} names no training objective")
