"""The config base every family's config derives from: config.json <-> frozen dataclass.

A config declares its Hugging Face fields (names and defaults as transformers has them) and, as
class variables, what differs from a plain copy: its own fields that config.json never holds
(`OURS`), fields stored as tuples that JSON writes as lists (`TUPLES`), older config.json keys
read for a field (`RENAMED`), keys that ask for something this port lacks (`UNSUPPORTED`),
nested configs (`NESTED`) and int fields that must be positive (`POSITIVE`). `from_hf` and
`to_hf` follow from those, and `from_hf` checks every value's type against the field's
annotation, so `"n_layer": "2"` fails naming the field instead of deep inside the model.

`ModelConfig` adds what a top-level model config has: the attention kernel, the dtypes, the
rematerialisation policy, `scan_layers` and `architectures`, the HF class names config.json
gives.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

import jax.numpy as jnp

from polyformer.attention import AttentionKernel, Dense
from polyformer.models.activations import check_activation

# The rematerialisation policies of `ModelConfig.remat`, models.layers.remat_layer's.
REMAT = ("none", "full", "dots", "minimal")


class ConfigError(ValueError):
    """A config.json value of the wrong type."""


def _describe(hint: Any) -> str:
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        plural = {bool: "booleans", int: "ints", float: "numbers", str: "strings"}
        return f"a list of {plural.get(typing.get_args(hint)[0], 'values')}"
    names = {bool: "true or false", int: "one int", float: "a number", str: "a string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def matches(value: Any, hint: Any) -> bool:
    """Whether a config.json value fits a field annotation. Classes other than the JSON scalar
    types (kernels, dtypes, nested configs) and the length of a fixed-size tuple are not checked
    here; the config's own checks say more about them."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, h) for h in typing.get_args(hint))
    if origin is tuple:
        args = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and all(matches(v, args[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@dataclasses.dataclass(frozen=True)
class HFConfig:
    """A frozen dataclass read from and written to a config.json dict."""

    model_type: ClassVar[str]
    OURS: ClassVar[tuple[str, ...]] = ()
    TUPLES: ClassVar[tuple[str, ...]] = ()
    RENAMED: ClassVar[Mapping[str, str]] = {}
    UNSUPPORTED: ClassVar[Mapping[str, str]] = {}
    NESTED: ClassVar[Mapping[str, type]] = {}
    POSITIVE: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        # Tuples, so that the config hashes (jit's static arguments): JSON gives lists.
        for name in self.TUPLES:
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in self.POSITIVE:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @classmethod
    def hf_fields(cls) -> set[str]:
        """The fields config.json holds."""
        return {f.name for f in dataclasses.fields(cls)} - set(cls.OURS)

    @classmethod
    def kwargs_from_hf(cls, hf: Mapping[str, Any]) -> dict[str, Any]:
        """The constructor arguments a config.json dict gives: unknown keys (generic HF ones like
        `transformers_version`) dropped, older names read, nested configs built, every value's
        type checked (ConfigError names the field)."""
        for key, what in cls.UNSUPPORTED.items():
            if hf.get(key):
                raise ValueError(f"config.json sets {key}: {what} are not supported")
        names = cls.hf_fields()
        kwargs = {k: v for k, v in hf.items() if k in names}
        for old, new in cls.RENAMED.items():
            if new not in kwargs and old in hf:
                kwargs[new] = hf[old]
        types_ = _field_types(cls)
        for name, value in kwargs.items():
            if name in cls.NESTED:
                continue
            if not matches(value, types_[name]):
                key = next((old for old, new in cls.RENAMED.items() if new == name), name)
                key = name if name in hf else key
                raise ConfigError(
                    f"config.json: {key} must be {_describe(types_[name])}, got {value!r}"
                )
        for name, nested in cls.NESTED.items():
            value = hf.get(name) or {}
            if not isinstance(value, Mapping):
                raise ConfigError(f"config.json: {name} must be a JSON object, got {value!r}")
            kwargs[name] = nested.from_hf(value)
        return kwargs

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> HFConfig:
        """From a config.json dict; generic HF keys are ignored."""
        return cls(**cls.kwargs_from_hf(hf))

    def to_hf(self) -> dict[str, Any]:
        """The config.json dict transformers reads (model_type first, tuples as lists)."""
        hf = {}
        for name in sorted(self.hf_fields()):
            value = getattr(self, name)
            if name in self.NESTED:
                value = value.to_hf()
            elif isinstance(value, tuple):
                value = list(value)
            hf[name] = value
        return {"model_type": self.model_type, **hf}


@dataclasses.dataclass(frozen=True)
class ModelConfig(HFConfig):
    """A top-level model config: HF fields, plus the kernel and dtypes of ours, plus
    `architectures`.

    Attributes:
      architectures: the HF class the model is, as config.json names it; one of ARCHITECTURES
        (the first is the default).
      attention: the kernel of every attention layer; None means `Dense` with the dropout rate
        of the field that ATTENTION_DROPOUT names.
      dtype: computation dtype; logits and softmax statistics stay float32.
      param_dtype: storage dtype of the parameters (written to config.json as HF's `dtype`).
      remat: what each layer of the stack keeps for the backward pass (`REMAT`): "none"
        everything; "full" only its input, recomputing the rest; "dots" the outputs of its
        matrix products; "minimal" only its attention and MLP outputs.
      scan_layers: the layer stack as one module whose parameters are stacked on a leading
        layer axis, run under jax.lax.scan (`models.layers.LayerStack`): the compiled program
        holds one layer, so compile time does not grow with depth; checkpoints are the same
        either way.
    """

    ARCHITECTURES: ClassVar[tuple[str, ...]]
    # config.json class names read as one of ARCHITECTURES (e.g. a GPT2Model checkpoint).
    ARCHITECTURE_ALIASES: ClassVar[Mapping[str, str]] = {}
    # The field holding the attention dropout rate of the default kernel.
    ATTENTION_DROPOUT: ClassVar[str]
    OURS: ClassVar[tuple[str, ...]] = (
        "attention",
        "dtype",
        "param_dtype",
        "remat",
        "scan_layers",
        "architectures",
    )
    TUPLES: ClassVar[tuple[str, ...]] = ("architectures",)

    architectures: tuple[str, ...] = ()
    attention: AttentionKernel | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: str = "none"
    scan_layers: bool = False

    def __post_init__(self):
        if not self.architectures:
            object.__setattr__(self, "architectures", self.ARCHITECTURES[:1])
        super().__post_init__()
        if len(self.architectures) != 1 or self.architectures[0] not in self.ARCHITECTURES:
            raise ValueError(
                f"architectures {list(self.architectures)} is not supported; expected one of "
                f"{', '.join(self.ARCHITECTURES)}"
            )
        if self.attention is not None and not callable(self.attention):
            raise ValueError(
                f"attention must be a kernel (e.g. polyformer.attention.Favor()), got "
                f"{self.attention!r}"
            )
        if self.remat not in REMAT:
            raise ValueError(f"remat must be one of {', '.join(REMAT)}, got {self.remat!r}")
        for name in ("dtype", "param_dtype"):
            if not _floating(getattr(self, name)):
                raise ValueError(
                    f"{name} must be a floating-point dtype (e.g. jnp.bfloat16), got "
                    f"{getattr(self, name)!r}"
                )

    @property
    def architecture(self) -> str:
        """The one HF class in `architectures`."""
        return self.architectures[0]

    @property
    def kernel(self) -> AttentionKernel:
        """The attention kernel: `attention`, or Dense with the config's attention dropout."""
        return self.kernel_with_dropout(getattr(self, self.ATTENTION_DROPOUT))

    def kernel_with_dropout(self, rate: float) -> AttentionKernel:
        return Dense(dropout_rate=rate) if self.attention is None else self.attention

    @classmethod
    def kwargs_from_hf(cls, hf: Mapping[str, Any]) -> dict[str, Any]:
        """HFConfig's, plus `architectures`: the first class config.json lists that this port
        builds (default: ARCHITECTURES[0]); ValueError when it lists none."""
        kwargs = super().kwargs_from_hf(hf)
        listed = hf.get("architectures") or cls.ARCHITECTURES[:1]
        if not matches(listed, tuple[str, ...]):
            raise ConfigError(
                f"config.json: architectures must be a list of strings, got {listed!r}"
            )
        known = [cls.ARCHITECTURE_ALIASES.get(a, a) for a in listed]
        known = [a for a in known if a in cls.ARCHITECTURES]
        if not known:
            only = " or ".join(cls.ARCHITECTURES)
            raise ValueError(
                f"config.json architectures {list(listed)} names no class this port has; only "
                f"{only} {'is' if len(cls.ARCHITECTURES) == 1 else 'are'} supported"
            )
        return {**kwargs, "architectures": (known[0],)}

    def to_hf(self) -> dict[str, Any]:
        """HFConfig's, plus `architectures` and HF's `dtype` (the storage dtype)."""
        return {
            **super().to_hf(),
            "architectures": list(self.architectures),
            "dtype": jnp.dtype(self.param_dtype).name,
        }


def _floating(dtype: Any) -> bool:
    """Whether `dtype` names a floating-point dtype; a typo ("float32x") fails at the first
    forward otherwise."""
    try:
        return jnp.issubdtype(jnp.dtype(dtype), jnp.floating)
    except TypeError:
        return False


@dataclasses.dataclass(frozen=True)
class EncoderConfig(ModelConfig):
    """A BERT-shaped layer stack's HF fields, with BERT-base's defaults: ViT, TAPAS and Wav2Vec2
    declare only the fields they add or whose default differs."""

    POSITIVE: ClassVar[tuple[str, ...]] = (
        "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    )  # fmt: skip

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12

    def __post_init__(self):
        super().__post_init__()
        check_activation(self.hidden_act)
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
