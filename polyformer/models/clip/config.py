"""CLIP's configuration: transformers' `CLIPConfig` with its nested `text_config` and
`vision_config`, plus ours (kernel, dtypes) on the outer config."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from polyformer.models.activations import check_activation
from polyformer.models.config import HFConfig, ModelConfig
from polyformer.models.vit.config import size_pair

# Before transformers PR #24773 the text config's eos_token_id was wrong (2); checkpoints that
# still say 2 (openai/clip-vit-base-patch32 among them) pool at the largest token id instead.
LEGACY_EOS_TOKEN_ID = 2


def _check_tower(config: Any, kind: str) -> None:
    check_activation(config.hidden_act)
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(
            f"{kind}: hidden_size={config.hidden_size} is not divisible by "
            f"num_attention_heads={config.num_attention_heads}"
        )
    for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if getattr(config, name) < 1:
            raise ValueError(f"{kind}: {name} must be positive, got {getattr(config, name)}")


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig(HFConfig):
    """transformers' `CLIPTextConfig` fields and defaults (the text tower of ViT-B/32).

    eos_token_id: where the pooled output is taken: the first position holding it, or, for the
    legacy value 2 that old checkpoints carry, the position of the largest token id (the end of
    text in CLIP's vocabulary).
    """

    model_type: ClassVar[str] = "clip_text_model"

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    initializer_factor: float = 1.0
    pad_token_id: int | None = 1
    bos_token_id: int | None = 49406
    eos_token_id: int = 49407

    def __post_init__(self):
        super().__post_init__()
        _check_tower(self, "text_config")
        if not isinstance(self.eos_token_id, int):
            raise ValueError(
                f"text_config: eos_token_id must be one int (the pooling position), got "
                f"{self.eos_token_id!r}"
            )

    @property
    def legacy_pooling(self) -> bool:
        return self.eos_token_id == LEGACY_EOS_TOKEN_ID


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig(HFConfig):
    """transformers' `CLIPVisionConfig` fields and defaults (ViT-B/32 at 224 px)."""

    model_type: ClassVar[str] = "clip_vision_model"
    TUPLES: ClassVar[tuple[str, ...]] = ("image_size", "patch_size")

    hidden_size: int = 768
    intermediate_size: int = 3072
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int | tuple[int, int] = 224
    patch_size: int | tuple[int, int] = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    initializer_factor: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        _check_tower(self, "vision_config")
        image, patch = (
            size_pair(self.image_size, "image_size"),
            size_pair(self.patch_size, "patch_size"),
        )
        if image[0] < patch[0] or image[1] < patch[1]:
            raise ValueError(f"patch_size {patch} is larger than image_size {image}")


@dataclasses.dataclass(frozen=True)
class CLIPConfig(ModelConfig):
    """transformers' `CLIPConfig` (openai/clip-vit-base-patch32's sizes by default) plus ours.

    Attributes:
      projection_dim: width of the shared image-text embedding space.
      logit_scale_init_value: initial log of the similarity temperature (ln(1 / 0.07)).
      attention: the kernel of every attention layer of both towers; None means
        `Dense(dropout_rate=...)` with each tower's attention_dropout (`tower_kernel`).
      dtype: computation dtype; similarity logits and embeddings stay float32.
    """

    model_type: ClassVar[str] = "clip"
    ARCHITECTURES: ClassVar[tuple[str, ...]] = ("CLIPModel",)
    NESTED: ClassVar[dict[str, type]] = {
        "text_config": CLIPTextConfig,
        "vision_config": CLIPVisionConfig,
    }
    POSITIVE: ClassVar[tuple[str, ...]] = ("projection_dim",)

    text_config: CLIPTextConfig = CLIPTextConfig()
    vision_config: CLIPVisionConfig = CLIPVisionConfig()
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592
    initializer_factor: float = 1.0

    @property
    def kernel(self) -> Any:
        raise AttributeError("CLIP's towers differ in dropout: use tower_kernel(tower)")

    def tower_kernel(self, tower: CLIPTextConfig | CLIPVisionConfig) -> Any:
        """The attention kernel of one tower's layers."""
        return self.kernel_with_dropout(tower.attention_dropout)

    @classmethod
    def clip_vit_base_patch32(cls, **overrides) -> CLIPConfig:
        """openai/clip-vit-base-patch32 (151M parameters), legacy eos_token_id 2 included."""
        text = CLIPTextConfig(bos_token_id=0, eos_token_id=2, pad_token_id=1)
        return cls(**{"text_config": text, **overrides})

    @classmethod
    def clip_vit_base_patch16(cls, **overrides) -> CLIPConfig:
        text = CLIPTextConfig(bos_token_id=0, eos_token_id=2, pad_token_id=1)
        vision = CLIPVisionConfig(patch_size=16)
        return cls(**{"text_config": text, "vision_config": vision, **overrides})

    @classmethod
    def tiny(cls, **overrides) -> CLIPConfig:
        """Odd sizes so that a transposed or mis-split weight cannot go unnoticed."""
        text = CLIPTextConfig(vocab_size=99, hidden_size=24, intermediate_size=37,
                              num_hidden_layers=2, num_attention_heads=2,
                              max_position_embeddings=13, bos_token_id=97, eos_token_id=7,
                              pad_token_id=1)  # fmt: skip
        vision = CLIPVisionConfig(hidden_size=36, intermediate_size=50, num_hidden_layers=2,
                                  num_attention_heads=3, image_size=20, patch_size=4)  # fmt: skip
        defaults = dict(text_config=text, vision_config=vision, projection_dim=16)
        return cls(**{**defaults, **overrides})
