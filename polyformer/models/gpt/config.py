"""GPT-2's configuration: Hugging Face's `GPT2Config` fields plus ours (kernel, dtypes)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax.numpy as jnp

from polyformer.attention import AttentionKernel, Dense
from polyformer.models.activations import check_activation

# config.json fields that change the architecture in ways this port does not implement.
_UNSUPPORTED = {"add_cross_attention": "cross-attention blocks (GPT-2 as a seq2seq decoder)"}


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """Field names and defaults are transformers' `GPT2Config` (the 124M model); `attention`,
    `dtype` and `param_dtype` are ours.

    Attributes:
      attention: the kernel of every attention layer; None means `Dense(dropout_rate=attn_pdrop)`.
        A kernel given here is used as it is (its own dropout, if any, replaces attn_pdrop).
      dtype: computation dtype; logits and softmax statistics stay float32.
      param_dtype: storage dtype of the parameters.
      reorder_and_upcast_attn: accepted for checkpoint compatibility; every kernel already
        computes attention scores and softmax in float32, which is what this flag asks of HF.
    """

    model_type: ClassVar[str] = "gpt2"

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

    attention: AttentionKernel | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        check_activation(self.activation_function)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def inner_dim(self) -> int:
        return 4 * self.n_embd if self.n_inner is None else self.n_inner

    @property
    def kernel(self) -> AttentionKernel:
        return Dense(dropout_rate=self.attn_pdrop) if self.attention is None else self.attention

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

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> GPT2Config:
        """From a config.json dict; keys of ours and generic HF keys (`architectures`,
        `use_cache`, ...) are ignored, architecture changes this port lacks raise ValueError."""
        for key, what in _UNSUPPORTED.items():
            if hf.get(key):
                raise ValueError(f"config.json sets {key}: {what} are not supported")
        ours = {"attention", "dtype", "param_dtype"}
        fields = {f.name for f in dataclasses.fields(cls)} - ours
        kwargs = {k: v for k, v in hf.items() if k in fields}
        if isinstance(kwargs.get("eos_token_id"), list):
            kwargs["eos_token_id"] = tuple(kwargs["eos_token_id"])
        return cls(**kwargs)

    def to_hf(self) -> dict[str, Any]:
        """The config.json dict that transformers' GPT2LMHeadModel reads."""
        hf = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("attention", "dtype", "param_dtype")
        }
        if isinstance(self.eos_token_id, tuple):
            hf["eos_token_id"] = list(self.eos_token_id)
        return {
            "model_type": self.model_type,
            "architectures": ["GPT2LMHeadModel"],
            # HF's name for the dtype the weights are stored in.
            "dtype": jnp.dtype(self.param_dtype).name,
            **hf,
        }
