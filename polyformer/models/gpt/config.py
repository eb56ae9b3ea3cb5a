"""GPT-2's configuration: Hugging Face's `GPT2Config` fields plus ours (kernel, dtypes)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from polyformer.models.activations import check_activation
from polyformer.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class GPT2Config(ModelConfig):
    """Field names and defaults are transformers' `GPT2Config` (the 124M model); the fields of
    ModelConfig (`attention`, `dtype`, `param_dtype`, `architectures`) are ours.

    Attributes:
      attention: the kernel of every attention layer; None means `Dense(dropout_rate=attn_pdrop)`.
        A kernel given here is used as it is (its own dropout, if any, replaces attn_pdrop).
      reorder_and_upcast_attn: accepted for checkpoint compatibility; every kernel already
        computes attention scores and softmax in float32, which is what this flag asks of HF.
    """

    model_type: ClassVar[str] = "gpt2"
    ARCHITECTURES: ClassVar[tuple[str, ...]] = ("GPT2LMHeadModel",)
    # The bare model's checkpoints load too: the LM head is tied to wte.
    ARCHITECTURE_ALIASES: ClassVar[dict[str, str]] = {"GPT2Model": "GPT2LMHeadModel"}
    ATTENTION_DROPOUT: ClassVar[str] = "attn_pdrop"
    UNSUPPORTED: ClassVar[dict[str, str]] = {
        "add_cross_attention": "cross-attention blocks (GPT-2 as a seq2seq decoder)"
    }
    TUPLES: ClassVar[tuple[str, ...]] = ("architectures", "eos_token_id")
    POSITIVE: ClassVar[tuple[str, ...]] = (
        "vocab_size",
        "n_positions",
        "n_embd",
        "n_layer",
        "n_head",
    )

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    reorder_and_upcast_attn: bool = False
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 50256
    eos_token_id: int | tuple[int, ...] | None = 50256
    pad_token_id: int | None = None

    def __post_init__(self):
        super().__post_init__()
        check_activation(self.activation_function)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")

    @property
    def inner_dim(self) -> int:
        return 4 * self.n_embd if self.n_inner is None else self.n_inner

    def attention_scale(self, layer_idx: int) -> float:
        """The factor on q.k in layer `layer_idx`, as HF's GPT2Attention computes it."""
        scale = (self.n_embd // self.n_head) ** -0.5 if self.scale_attn_weights else 1.0
        if self.scale_attn_by_inverse_layer_idx:
            scale /= float(layer_idx + 1)
        return scale

    # Named constructors: the official sizes and the one the tests use.
    @classmethod
    def gpt2(cls, **overrides) -> GPT2Config:
        """124M parameters."""
        return cls(**overrides)

    @classmethod
    def gpt2_medium(cls, **overrides) -> GPT2Config:
        """355M parameters."""
        return cls(**{"n_embd": 1024, "n_layer": 24, "n_head": 16, **overrides})

    @classmethod
    def gpt2_large(cls, **overrides) -> GPT2Config:
        """774M parameters."""
        return cls(**{"n_embd": 1280, "n_layer": 36, "n_head": 20, **overrides})

    @classmethod
    def gpt2_xl(cls, **overrides) -> GPT2Config:
        """1.5B parameters."""
        return cls(**{"n_embd": 1600, "n_layer": 48, "n_head": 25, **overrides})

    @classmethod
    def tiny(cls, **overrides) -> GPT2Config:
        """Odd sizes so that a transposed or mis-split weight cannot go unnoticed."""
        defaults = dict(
            vocab_size=1031, n_positions=37, n_embd=96, n_layer=3, n_head=6,
            bos_token_id=1030, eos_token_id=1030,
        )  # fmt: skip
        return cls(**{**defaults, **overrides})
