"""ViT's configuration: transformers' `ViTConfig` fields plus ours (head, kernel, dtypes)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from flax.core import FrozenDict

from polyformer.models.activations import check_activation
from polyformer.models.config import EncoderConfig


def size_pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    """An HF image or patch size (one int, or [height, width]) as (height, width)."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or [height, width], got {value!r}")
    return pair


def labels(
    id2label: Mapping[Any, str] | None,
    label2id: Mapping[str, Any] | None,
    num_labels: int | None,
) -> FrozenDict:
    """id2label as transformers derives it from config.json: `id2label` (string keys in JSON),
    else `num_labels` names LABEL_0..; a `label2id` or `num_labels` that disagrees raises."""
    if id2label is None:
        count = 2 if num_labels is None else num_labels
        id2label = {i: f"LABEL_{i}" for i in range(count)}
    result = FrozenDict({int(k): v for k, v in id2label.items()})
    if sorted(result) != list(range(len(result))):
        raise ValueError(f"id2label keys must be 0..n-1, got {sorted(result)}")
    if num_labels is not None and num_labels != len(result):
        raise ValueError(f"num_labels={num_labels} but id2label has {len(result)} entries")
    if label2id is not None and {k: int(v) for k, v in label2id.items()} != {
        v: k for k, v in result.items()
    }:
        raise ValueError("label2id is not the inverse of id2label")
    return result


@dataclasses.dataclass(frozen=True)
class ViTConfig(EncoderConfig):
    """Field names and defaults are transformers' `ViTConfig` (ViT-B/16 at 224 px); the rest are
    ours.

    Attributes:
      id2label: class index -> name; the classifier has len(id2label) outputs (`num_labels`).
      architectures: the model class config.json names: the classifier
        ("ViTForImageClassification") or the bare encoder ("ViTModel").
      add_pooling_layer: ViTModel only: the pooler (dense + pooler_act on the CLS token), which
        transformers' ViTModel has by default; written to config.json only when False.
      attention: the kernel of every attention layer; None means
        `Dense(dropout_rate=attention_probs_dropout_prob)`.
    """

    model_type: ClassVar[str] = "vit"
    ARCHITECTURES: ClassVar[tuple[str, ...]] = ("ViTForImageClassification", "ViTModel")
    ATTENTION_DROPOUT: ClassVar[str] = "attention_probs_dropout_prob"
    OURS: ClassVar[tuple[str, ...]] = (*EncoderConfig.OURS, "add_pooling_layer", "id2label")
    TUPLES: ClassVar[tuple[str, ...]] = (*EncoderConfig.TUPLES, "image_size", "patch_size")
    POSITIVE: ClassVar[tuple[str, ...]] = (*EncoderConfig.POSITIVE, "num_channels")

    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    image_size: int | tuple[int, int] = 224
    patch_size: int | tuple[int, int] = 16
    num_channels: int = 3
    qkv_bias: bool = True
    encoder_stride: int = 16
    pooler_output_size: int | None = None
    pooler_act: str = "tanh"
    id2label: FrozenDict = FrozenDict({0: "LABEL_0", 1: "LABEL_1"})
    add_pooling_layer: bool = True

    def __post_init__(self):
        check_activation(self.pooler_act)
        super().__post_init__()
        for name in ("image_size", "patch_size"):
            size_pair(getattr(self, name), name)
        if self.pooler_output_size is None:  # as transformers: the pooler keeps the width
            object.__setattr__(self, "pooler_output_size", self.hidden_size)
        if not isinstance(self.id2label, FrozenDict):
            object.__setattr__(self, "id2label", labels(self.id2label, None, None))
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.architecture == "ViTForImageClassification" and self.num_labels < 1:
            raise ValueError("ViTForImageClassification needs at least one label in id2label")
        image, patch = self.image_grid_size, size_pair(self.patch_size, "patch_size")
        if 0 in image:
            raise ValueError(f"patch_size {patch} is larger than image_size {self.image_size}")

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in self.id2label.items()}

    @property
    def image_grid_size(self) -> tuple[int, int]:
        """Patches per column and per row at `image_size`: the position-embedding grid."""
        (h, w), (ph, pw) = (
            size_pair(self.image_size, "image_size"),
            size_pair(self.patch_size, "patch_size"),
        )
        return h // ph, w // pw

    @classmethod
    def vit_base_patch16_224(cls, **overrides) -> ViTConfig:
        """google/vit-base-patch16-224's architecture (86M parameters; its 1000 ImageNet label
        names are in its config.json and not repeated here)."""
        return cls(**{"id2label": {i: f"LABEL_{i}" for i in range(1000)}, **overrides})

    @classmethod
    def vit_large_patch16_224(cls, **overrides) -> ViTConfig:
        defaults = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                        intermediate_size=4096)  # fmt: skip
        return cls.vit_base_patch16_224(**{**defaults, **overrides})

    @classmethod
    def tiny(cls, **overrides) -> ViTConfig:
        """Odd sizes so that a transposed or mis-split weight cannot go unnoticed."""
        defaults = dict(hidden_size=36, num_hidden_layers=2, num_attention_heads=3,
                        intermediate_size=50, image_size=20, patch_size=4,
                        id2label={i: f"class {i}" for i in range(5)})  # fmt: skip
        return cls(**{**defaults, **overrides})

    @classmethod
    def kwargs_from_hf(cls, hf: Mapping[str, Any]) -> dict[str, Any]:
        """ModelConfig's, plus the labels (`id2label`, `label2id`, `num_labels` as transformers
        reads them) and our `add_pooling_layer`."""
        kwargs = super().kwargs_from_hf(hf)
        kwargs["id2label"] = labels(hf.get("id2label"), hf.get("label2id"), hf.get("num_labels"))
        if "add_pooling_layer" in hf:
            kwargs["add_pooling_layer"] = bool(hf["add_pooling_layer"])
        return kwargs

    def to_hf(self) -> dict[str, Any]:
        """The config.json dict that transformers' class `architecture` reads."""
        hf = {
            **super().to_hf(),
            "id2label": {str(i): label for i, label in self.id2label.items()},
            "label2id": self.label2id,
        }
        if self.architecture == "ViTModel" and not self.add_pooling_layer:
            # Not a transformers field (it is a ViTModel argument); read back by from_hf.
            hf["add_pooling_layer"] = False
        return hf
