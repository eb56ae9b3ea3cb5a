"""Run configs: one Python file per experiment, overridable from the command line.

An experiment file under `experiments/configs/` defines `config() -> RunConfig`.
`polyformer train CONFIG --set model.n_layer=4 attention=favor` loads it and applies the
overrides; a key that does not exist is an error that lists the keys that do.
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
from polyformer.models.gpt import GPT2Config
from polyformer.training.optim import OptimizerConfig
from polyformer.training.sharding import MeshConfig

# Attention kernels by the names a run config and the command line use.
ATTENTION: dict[str, AttentionKernel | None] = {
    "dense": None,  # the model's own Dense (with its attn_pdrop)
    "favor": Favor(num_features=256),
    "band": Sparse(patterns.band(128)),
    "longformer": Sparse(patterns.longformer(256, [0])),
}


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Causal-LM input: a TFDS dataset's text feature, tokenised and cut into windows."""

    dataset: str = "python_stdlib"
    text_feature: str = "text"
    data_dir: str | None = None
    tokenizer: str = "bpe"  # "bpe" (trained on the train split) or "bytes"
    vocab_size: int = 4096
    seq_len: int = 128

    def load(self):
        """The corpus (built, tokenised and cached on first use) as `LMData`."""
        from polyformer.training import data

        corpus = data.prepare_lm_corpus(
            self.dataset,
            vocab_size=self.vocab_size if self.tokenizer == "bpe" else None,
            text_key=self.text_feature,
            data_dir=self.data_dir,
        )
        return data.LMData(corpus, self.seq_len)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs.

    `model` is the config of any model family `polyformer.hub.FAMILIES` knows (HF field names;
    the model trained is the class the family builds from it). `data` is a data config whose
    `load()` returns what `trainer.Trainer` reads (see its docstring): `DataConfig` for causal-LM
    text, `polyformer.training.data.ArrayData` behind the vision, speech and table configs.
    `objective` names the loss in `objectives.OBJECTIVES`.
    """

    model: Any = GPT2Config.tiny()
    attention: str = "dense"
    precision: str = "float32"  # or "bfloat16": bfloat16 compute, float32 master weights
    optimizer: OptimizerConfig = OptimizerConfig()
    data: Any = DataConfig()
    mesh: MeshConfig = MeshConfig()
    objective: str = "causal_lm"
    steps: int = 1000
    batch_size: int = 16  # global, across all hosts and devices
    eval_every: int = 200
    eval_batches: int = 8
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    log_every: int = 10
    seed: int = 0
    out_dir: str = "runs/default"

    def __post_init__(self):
        if self.attention not in ATTENTION:
            raise ValueError(f"attention={self.attention!r} is not one of {', '.join(ATTENTION)}")
        if self.precision not in ("float32", "bfloat16"):
            raise ValueError(f"precision must be 'float32' or 'bfloat16', got {self.precision!r}")
        for name in ("model", "data"):
            if not dataclasses.is_dataclass(getattr(self, name)):
                raise ValueError(f"{name} must be a config dataclass, got {getattr(self, name)!r}")
        if not hasattr(self.data, "load"):
            raise ValueError(f"data={type(self.data).__name__} has no load() method")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(
                f"steps and batch_size must be positive: {self.steps}, {self.batch_size}"
            )


def load(path: str | Path) -> RunConfig:
    """Runs the experiment file at `path` and returns its `config()`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file at {path}")
    spec = importlib.util.spec_from_file_location(f"polyformer_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "config"):
        raise ValueError(f"{path} must define config() -> RunConfig")
    config = module.config()
    if not isinstance(config, RunConfig):
        raise ValueError(f"{path}: config() returned {type(config).__name__}, not RunConfig")
    return config


def _keys(config: Any, prefix: str = "") -> list[str]:
    keys = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            keys += _keys(value, f"{prefix}{field.name}.")
        else:
            keys.append(prefix + field.name)
    return keys


def _parse(text: str, annotation: Any, key: str) -> Any:
    """A command-line value as the field's type: int, float, bool, None, str or a tuple."""
    origin = typing.get_origin(annotation)
    options = typing.get_args(annotation) if origin in (typing.Union, types.UnionType) else ()
    if annotation is str or (str in options and text.lower() not in ("none",)):
        return text
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
    if head not in fields or (rest and not dataclasses.is_dataclass(getattr(config, head))):
        raise ValueError(
            f"unknown config key {prefix + key!r}; valid keys: {', '.join(_keys(config, prefix))}"
        )
    if rest:
        inner = override(getattr(config, head), rest, text, f"{prefix}{head}.")
        return dataclasses.replace(config, **{head: inner})
    hints = typing.get_type_hints(type(config))
    return dataclasses.replace(config, **{head: _parse(text, hints[head], prefix + key)})


def apply_overrides(config: RunConfig, assignments: list[str]) -> RunConfig:
    """Applies `key=value` strings in order."""
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep:
            raise ValueError(f"--set wants key=value, got {assignment!r}")
        config = override(config, key.strip(), value.strip())
    return config
