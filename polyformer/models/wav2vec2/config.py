"""Wav2Vec2's configuration: Hugging Face's `Wav2Vec2Config` fields plus ours (kernel, dtypes)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

from polyformer.models.activations import check_activation
from polyformer.models.config import EncoderConfig


@dataclasses.dataclass(frozen=True)
class Wav2Vec2Config(EncoderConfig):
    """Field names and defaults are transformers' `Wav2Vec2Config` (facebook/wav2vec2-base-960h's
    architecture); the fields of ModelConfig (`architectures`, `attention`, `dtype`,
    `param_dtype`) are ours.

    Attributes:
      architectures: the head class, as config.json names it: "Wav2Vec2ForCTC" (logits over
        `vocab_size` characters per frame) or "Wav2Vec2Model" (hidden states only).
      feat_extract_norm: "group" (GroupNorm over time on the first conv only: base-960h,
        large-960h) or "layer" (LayerNorm over channels after every conv: the lv60 models).
      do_stable_layer_norm: False is the post-LN encoder (encoder layer_norm before the layers);
        True the pre-LN one (encoder layer_norm after them).
      mask_time_prob, mask_feature_prob: SpecAugment; when either is positive the model owns
        `masked_spec_embed`, the vector that masked frames are replaced with (checkpoints hold it).
      attention: the kernel of every attention layer; None means
        `Dense(dropout_rate=attention_dropout)`.

    Fields for heads and training setups this port does not build (quantizer, TDNN, adapters,
    CTC loss options) are kept so that a config.json round-trips; adapters raise ValueError.
    """

    model_type: ClassVar[str] = "wav2vec2"
    ARCHITECTURES: ClassVar[tuple[str, ...]] = ("Wav2Vec2ForCTC", "Wav2Vec2Model")
    ATTENTION_DROPOUT: ClassVar[str] = "attention_dropout"
    TUPLES: ClassVar[tuple[str, ...]] = (
        *EncoderConfig.TUPLES,
        *("conv_dim", "conv_stride", "conv_kernel", "tdnn_dim", "tdnn_kernel", "tdnn_dilation"),
    )
    POSITIVE: ClassVar[tuple[str, ...]] = (
        *EncoderConfig.POSITIVE, "vocab_size", "num_conv_pos_embeddings",
    )  # fmt: skip

    vocab_size: int = 32
    hidden_dropout: float = 0.1
    activation_dropout: float = 0.1
    attention_dropout: float = 0.1
    feat_proj_dropout: float = 0.0
    feat_quantizer_dropout: float = 0.0
    final_dropout: float = 0.1
    layerdrop: float = 0.1
    layer_norm_eps: float = 1e-5
    feat_extract_norm: str = "group"
    feat_extract_activation: str = "gelu"
    conv_dim: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_bias: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    do_stable_layer_norm: bool = False
    apply_spec_augment: bool = True
    mask_time_prob: float = 0.05
    mask_time_length: int = 10
    mask_time_min_masks: int = 2
    mask_feature_prob: float = 0.0
    mask_feature_length: int = 10
    mask_feature_min_masks: int = 0
    num_codevectors_per_group: int = 320
    num_codevector_groups: int = 2
    contrastive_logits_temperature: float = 0.1
    num_negatives: int = 100
    codevector_dim: int = 256
    proj_codevector_dim: int = 256
    diversity_loss_weight: float = 0.1
    ctc_loss_reduction: str = "sum"
    ctc_zero_infinity: bool = False
    use_weighted_layer_sum: bool = False
    classifier_proj_size: int = 256
    tdnn_dim: tuple[int, ...] = (512, 512, 512, 512, 1500)
    tdnn_kernel: tuple[int, ...] = (5, 3, 3, 1, 1)
    tdnn_dilation: tuple[int, ...] = (1, 2, 3, 1, 1)
    xvector_output_dim: int = 512
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    add_adapter: bool = False
    adapter_kernel_size: int = 3
    adapter_stride: int = 2
    num_adapter_layers: int = 3
    output_hidden_size: int | None = None
    adapter_attn_dim: int | None = None

    def __post_init__(self):
        super().__post_init__()
        check_activation(self.feat_extract_activation)
        if self.feat_extract_norm not in ("group", "layer"):
            raise ValueError(
                f"feat_extract_norm must be 'group' or 'layer', got {self.feat_extract_norm!r}"
            )
        if not len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride) >= 1:
            raise ValueError(
                "conv_dim, conv_kernel and conv_stride must have one entry per feature-encoder "
                f"layer, got {len(self.conv_dim)}, {len(self.conv_kernel)}, "
                f"{len(self.conv_stride)} entries"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_conv_pos_embedding_groups={self.num_conv_pos_embedding_groups}"
            )
        if self.add_adapter or self.adapter_attn_dim is not None:
            raise ValueError(
                "config sets add_adapter or adapter_attn_dim: Wav2Vec2 adapter layers are not "
                "supported"
            )

    @property
    def num_feat_extract_layers(self) -> int:
        return len(self.conv_dim)

    @property
    def has_masked_spec_embed(self) -> bool:
        """Whether HF's Wav2Vec2Model creates `masked_spec_embed` for this config."""
        return self.mask_time_prob > 0.0 or self.mask_feature_prob > 0.0

    @property
    def inputs_to_logits_ratio(self) -> int:
        """Samples per frame: the product of the conv strides (320 for the official models)."""
        return math.prod(self.conv_stride)

    # Named constructors: the official sizes and the one the tests use.
    @classmethod
    def base_960h(cls, **overrides) -> Wav2Vec2Config:
        """facebook/wav2vec2-base-960h: 95M parameters, GroupNorm feature encoder, post-LN."""
        return cls(**{"feat_proj_dropout": 0.1, **overrides})

    @classmethod
    def large_960h(cls, **overrides) -> Wav2Vec2Config:
        """facebook/wav2vec2-large-960h: 317M parameters, GroupNorm feature encoder, post-LN."""
        sizes = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                     intermediate_size=4096, feat_proj_dropout=0.1)  # fmt: skip
        return cls(**{**sizes, **overrides})

    @classmethod
    def large_960h_lv60_self(cls, **overrides) -> Wav2Vec2Config:
        """facebook/wav2vec2-large-960h-lv60-self: LayerNorm feature encoder with conv biases,
        pre-LN ("stable layer norm") encoder."""
        return cls.large_960h(
            **{
                "feat_extract_norm": "layer",
                "conv_bias": True,
                "do_stable_layer_norm": True,
                **overrides,
            }  # fmt: skip
        )

    @classmethod
    def tiny(cls, **overrides) -> Wav2Vec2Config:
        """Odd sizes so that a transposed or mis-split weight cannot go unnoticed."""
        defaults = dict(
            vocab_size=37, hidden_size=36, num_hidden_layers=2, num_attention_heads=3,
            intermediate_size=43, conv_dim=(24, 20, 28), conv_kernel=(10, 3, 2),
            conv_stride=(5, 2, 2), num_conv_pos_embeddings=12, num_conv_pos_embedding_groups=3,
        )  # fmt: skip
        return cls(**{**defaults, **overrides})

    @classmethod
    def kwargs_from_hf(cls, hf: Mapping[str, Any]) -> dict[str, Any]:
        """ModelConfig's; keys older versions wrote (`gradient_checkpointing`,
        `feat_extract_dropout`, ...) are ignored, a `num_feat_extract_layers` that disagrees with
        `conv_dim` raises ValueError."""
        kwargs = super().kwargs_from_hf(hf)
        # HF writes hidden_size there when there is no adapter; None keeps a replace() of
        # hidden_size consistent.
        if kwargs.get("output_hidden_size") == kwargs.get("hidden_size", cls.hidden_size):
            kwargs["output_hidden_size"] = None
        layers = hf.get("num_feat_extract_layers")
        if layers is not None and layers != len(hf.get("conv_dim", cls.conv_dim)):
            raise ValueError(
                f"config.json has num_feat_extract_layers={layers} but "
                f"{len(hf['conv_dim'])} conv_dim entries"
            )
        return kwargs

    def to_hf(self) -> dict[str, Any]:
        """The config.json dict that transformers' Wav2Vec2ForCTC / Wav2Vec2Model reads."""
        return {
            **super().to_hf(),
            "num_feat_extract_layers": self.num_feat_extract_layers,
            "output_hidden_size": self.output_hidden_size or self.hidden_size,
        }
