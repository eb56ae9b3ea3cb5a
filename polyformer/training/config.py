"""Run configs: one Python file per experiment, overridable from the command line.

An experiment file under `experiments/configs/` defines `config() -> RunConfig`.
`polyformer train CONFIG --set model.n_layer=4 attention=favor` loads it and applies the
overrides; a key that does not exist is an error that lists the keys that do. A key inside an
optional section that the config leaves at None creates the section with its defaults first:
`--set lora.rank=8` trains LoRA adapters (a `polyformer.lora.LoraConfig(rank=8)`).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import types
import typing
from pathlib import Path
from typing import Any

from polyformer.attention import AttentionKernel, Favor, Sparse, patterns
from polyformer.lora import LoraConfig, LoraConfigError, check_targets
from polyformer.models import FAMILIES
from polyformer.models.gpt import GPT2Config
from polyformer.training.data import DataConfig, TextData
from polyformer.training.initializers import ModelInit
from polyformer.training.objectives import OBJECTIVES
from polyformer.training.optim import OptimizerConfig
from polyformer.training.sharding import MeshConfig

# Attention kernels by the names a run config and the command line use.
ATTENTION: dict[str, AttentionKernel | None] = {
    "dense": None,  # the model's own Dense (with its attn_pdrop)
    "favor": Favor(num_features=256),
    "band": Sparse(patterns.band(128)),
    "longformer": Sparse(patterns.longformer(256, [0])),
}
PRECISIONS = ("float32", "bfloat16")
# Counts and intervals that must be at least 1.
POSITIVE = (
    "steps", "batch_size", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints",
    "log_every",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs.

    `model` is the config of any model family in `polyformer.models.FAMILIES` (HF field names;
    the model trained is the class the family builds from it). `data` is a data config
    (`polyformer.training.data.DataConfig`: `TextData` for causal-LM text, or the vision, speech
    and table configs of `polyformer.training.data`) whose `load()` returns the `TrainData` the
    trainer reads. `objective` names the loss in `objectives.OBJECTIVES`, one of those the
    family lists (None: the family's first, `objective_name`). `lora`: None trains every
    parameter; a `polyformer.lora.LoraConfig` adds adapters to the model and trains only them
    (its defaults are PEFT's: rank 8, alpha 8, no dropout, and the family's
    `lora.DEFAULT_TARGETS`, the attention's query and value projections: `c_attn` for GPT-2).
    `model_init` is where the weights start (`polyformer.training.initializers`, e.g. `FromBert`);
    None: the family's random initialisation. Every field is checked here, when the config is
    built, so a bad value fails before anything compiles.
    """

    model: Any = GPT2Config.tiny()
    attention: str = "dense"
    precision: str = "float32"  # or "bfloat16": bfloat16 compute, float32 master weights
    optimizer: OptimizerConfig = OptimizerConfig()
    data: DataConfig = TextData()
    mesh: MeshConfig = MeshConfig()
    objective: str | None = None
    model_init: ModelInit | None = None
    lora: LoraConfig | None = None
    steps: int = 1000
    batch_size: int = 16  # global, across all hosts and devices
    eval_every: int = 200
    eval_batches: int = 8
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    log_every: int = 10
    seed: int = 0
    out_dir: str = "runs/default"

    @property
    def objective_name(self) -> str:
        """The objective trained: `objective`, or the model family's default."""
        return self.objective or FAMILIES[self.model.model_type].objectives[0]

    def __post_init__(self):
        if self.attention not in ATTENTION:
            raise ValueError(f"attention={self.attention!r} is not one of {', '.join(ATTENTION)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        family = FAMILIES.get(getattr(self.model, "model_type", None))
        if family is None or not isinstance(self.model, family.config):
            raise ValueError(
                f"model must be the config of a model family ({', '.join(FAMILIES)}), got "
                f"{self.model!r}"
            )
        if not dataclasses.is_dataclass(self.data) or not isinstance(self.data, DataConfig):
            raise ValueError(
                f"data must be a data config dataclass with load(), got {type(self.data).__name__}"
            )
        if self.objective is not None and self.objective not in family.objectives:
            what = "does not train" if self.objective in OBJECTIVES else "is no objective for"
            raise ValueError(
                f"objective={self.objective!r} {what} {family.model_type} models; give one of "
                f"{', '.join(family.objectives)} (or None, for {family.objectives[0]})"
            )
        if self.model_init is not None and not (
            dataclasses.is_dataclass(self.model_init) and isinstance(self.model_init, ModelInit)
        ):
            raise ValueError(
                f"model_init must be None or a model init dataclass with load(model_config) "
                f"(polyformer.training.initializers), got {self.model_init!r}"
            )
        if self.lora is not None:
            if not isinstance(self.lora, LoraConfig):
                raise ValueError(
                    f"lora must be a polyformer.lora.LoraConfig or None, got {self.lora!r}"
                )
            try:
                check_targets(self.model, self.lora)
            except LoraConfigError as e:
                raise LoraConfigError(f"lora.{e}") from None
        for name in POSITIVE:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not self.out_dir:
            raise ValueError("out_dir must name a directory, got an empty string")
        if self.batch_size % self.optimizer.accumulation_steps:
            raise ValueError(
                f"batch_size={self.batch_size} does not split into "
                f"optimizer.accumulation_steps={self.optimizer.accumulation_steps} micro-batches"
            )


class MissingExtra(FileNotFoundError):
    """A run config needs files from an optional package that is not installed (the message
    names the package and its install command)."""


def load(path: str | Path) -> RunConfig:
    """Runs the experiment file at `path` and returns its `config()`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file at {path}")
    if path.suffix != ".py":
        raise ValueError(
            f"{path}: a run config is a Python file defining config() -> RunConfig, e.g. "
            "experiments/configs/gpt_stdlib_demo.py"
        )
    spec = importlib.util.spec_from_file_location(f"polyformer_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        # The import machinery's traceback would hide the one line that matters.
        raise ValueError(f"{path}, line {e.lineno}: {e.msg}: {(e.text or '').strip()}") from e
    if not hasattr(module, "config"):
        raise ValueError(f"{path} must define config() -> RunConfig")
    config = module.config()
    if not isinstance(config, RunConfig):
        raise ValueError(f"{path}: config() returned {type(config).__name__}, not RunConfig")
    return config


def _section(config: Any, name: str) -> Any:
    """The dataclass in field `name` of `config`; where the field is None and typed
    `Section | None`, a `Section()` with its defaults (so `--set lora.rank=8` creates the LoRA
    section); None for a field that holds no section."""
    value = getattr(config, name)
    if value is not None:
        return value if dataclasses.is_dataclass(value) else None
    annotation = typing.get_type_hints(type(config))[name]
    sections = [t for t in typing.get_args(annotation) if dataclasses.is_dataclass(t)]
    return sections[0]() if len(sections) == 1 else None


def _keys(config: Any, prefix: str = "") -> list[str]:
    keys = []
    for field in dataclasses.fields(config):
        section = _section(config, field.name)
        if section is not None:
            keys += _keys(section, f"{prefix}{field.name}.")
        else:
            keys.append(prefix + field.name)
    return keys


def _literal_of(text: str, options: tuple[Any, ...]) -> bool:
    """Whether `text` is None or a Python tuple or list literal that a field typed as one of
    `options` (a union with str) takes as such rather than as a string: `--set
    lora.target_modules="('c_attn', 'c_proj')"`."""
    if text.lower() == "none":
        return True
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return False
    kinds = {typing.get_origin(t) or t for t in options}
    return isinstance(value, tuple | list) and bool(kinds & {tuple, list})


def _parse(text: str, annotation: Any, key: str) -> Any:
    """A command-line value as the field's type: int, float, bool, None, str or a tuple."""
    origin = typing.get_origin(annotation)
    options = typing.get_args(annotation) if origin in (typing.Union, types.UnionType) else ()
    if annotation is str or (str in options and not _literal_of(text, options)):
        return text
    if annotation is bool and text in ("true", "false"):  # JSON's and most shells' spelling
        return text == "true"
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValueError(f"--set {key}={text}: not a valid value for {annotation}") from None
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    plain = annotation in (int, float, bool)
    if plain and (type(value) is not annotation):
        raise ValueError(f"--set {key}={text}: expected {annotation.__name__}")
    return value


def override(config: Any, key: str, text: str, prefix: str = "") -> Any:
    """`config` with the field at dotted `key` set from the string `text`."""
    head, _, rest = key.partition(".")
    fields = {f.name: f for f in dataclasses.fields(config)}
    section = _section(config, head) if head in fields else None
    if head not in fields or (rest and section is None):
        raise ValueError(
            f"unknown config key {prefix + key!r}; valid keys: {', '.join(_keys(config, prefix))}"
        )
    if rest:
        inner = override(section, rest, text, f"{prefix}{head}.")
        return dataclasses.replace(config, **{head: inner})
    hints = typing.get_type_hints(type(config))
    return dataclasses.replace(config, **{head: _parse(text, hints[head], prefix + key)})


def apply_overrides(config: RunConfig, assignments: list[str]) -> RunConfig:
    """Applies `key=value` strings in order."""
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep:
            raise ValueError(f"--set wants key=value, got {assignment!r}")
        try:
            config = override(config, key.strip(), value.strip())
        except ValueError as error:
            # A section's own check (LoraConfig(rank=0)) names the field, not the key typed.
            if str(error).startswith(("--set", "unknown config key")):
                raise
            raise ValueError(f"--set {assignment}: {error}") from error
    return config
