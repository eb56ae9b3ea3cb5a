"""The transformer encoder layer that ViT, both CLIP towers (pre-LayerNorm) and TAPAS (BERT's
post-LayerNorm) are built from.

One implementation, named after transformers' CLIP layers (`layer_norm1`, `self_attn`,
`layer_norm2`, `mlp.fc1`, `mlp.fc2`); each family's conversion table maps its own Hugging Face
names onto it (ViT's `layernorm_before`, `attention.attention.query`, `intermediate.dense`;
TAPAS's `attention.output.LayerNorm`, `output.dense`, ...).

GPT-2 keeps its own block: its parameter names are GPT-2's (`ln_1`, `c_attn`, ...) and it decodes
against a KV cache; neither belongs here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from polyformer.attention import AttentionKernel, MultiHeadAttention
from polyformer.attention.layer import linear
from polyformer.attention.layout import constrain
from polyformer.models.activations import ACTIVATIONS
from polyformer.models.layers import (
    MLP_HIDDEN,
    MLP_OUTPUT,
    attend,
    layer_norm,
    layer_output,
    layer_stack,
    run_layers,
)


@flax.struct.dataclass
class BaseModelOutputWithPooling:
    """What ViTModel, TapasModel and both CLIP towers return (transformers' class of that name).

    last_hidden_state `[batch, length, hidden_size]`; pooler_output `[batch, hidden_size]` (None
    for a ViTModel without pooler); hidden_states, when asked for: num_hidden_layers + 1 arrays
    `[batch, length, hidden_size]`, the embeddings then each layer's output; attentions, when
    asked for: num_hidden_layers arrays `[batch, num_attention_heads, length, length]` (float32),
    each layer's attention probabilities."""

    last_hidden_state: jax.Array
    pooler_output: jax.Array | None = None
    hidden_states: tuple[jax.Array, ...] | None = None
    attentions: tuple[jax.Array, ...] | None = None

    @classmethod
    def of(
        cls,
        last_hidden_state: jax.Array,
        pooler_output: jax.Array | None,
        hidden_states: tuple[jax.Array, ...],
        attentions: tuple[jax.Array, ...] | None,
        output_hidden_states: bool,
    ) -> BaseModelOutputWithPooling:
        """The output, holding `hidden_states` (Encoder's or run_layers' second result) only
        when output_hidden_states."""
        hidden_states = hidden_states if output_hidden_states else None
        return cls(last_hidden_state, pooler_output, hidden_states, attentions)


@dataclasses.dataclass(frozen=True)
class EncoderInit:
    """Standard deviations of the normal initialisers of one encoder's weights (biases start at
    zero, LayerNorms at one and zero). Families differ: ViT uses one value everywhere, CLIP
    scales each by width and depth."""

    qkv: float
    out: float
    fc1: float
    fc2: float

    @classmethod
    def uniform(cls, std: float) -> EncoderInit:
        return cls(std, std, std, std)


class EncoderMLP(nnx.Module):
    """fc1 -> activation -> fc2, on x `[batch, length, hidden]`."""

    def __init__(
        self,
        hidden: int,
        intermediate: int,
        *,
        activation: str,
        init: EncoderInit,
        dtype: Any,
        param_dtype: Any,
        rngs: nnx.Rngs,
    ):
        dtypes = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        normal = nnx.initializers.normal
        self.fc1 = linear(
            hidden, intermediate, ("embed", "mlp"), kernel_init=normal(init.fc1), **dtypes
        )
        self.fc2 = linear(
            intermediate, hidden, ("mlp", "embed"), kernel_init=normal(init.fc2), **dtypes
        )
        self.act = ACTIVATIONS[activation]

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(constrain(self.act(self.fc1(x)), MLP_HIDDEN))


class EncoderLayer(nnx.Module):
    """x + dropout(self_attn(layer_norm1(x))), then x + dropout(mlp(layer_norm2(x))); x
    `[batch, length, hidden]`. With `post_norm` (BERT's layout) the norms come after each
    residual sum instead: layer_norm1(x + dropout(self_attn(x))), then layer_norm2(x +
    dropout(mlp(x))). Dropout (attention weights: the kernel's; hidden: `dropout`) runs only
    when the call gets `rngs`."""

    def __init__(
        self,
        hidden: int,
        num_heads: int,
        intermediate: int,
        *,
        activation: str,
        epsilon: float,
        kernel: AttentionKernel,
        qkv_bias: bool = True,
        dropout: float = 0.0,
        post_norm: bool = False,
        init: EncoderInit,
        dtype: Any,
        param_dtype: Any,
        rngs: nnx.Rngs,
    ):
        dtypes = dict(dtype=dtype, param_dtype=param_dtype)
        normal = nnx.initializers.normal
        self.post_norm = post_norm
        self.layer_norm1 = layer_norm(hidden, epsilon, **dtypes, rngs=rngs)
        self.self_attn = MultiHeadAttention(
            num_heads,
            hidden,
            kernel=kernel,
            qkv_bias=qkv_bias,
            kernel_init=normal(init.qkv),
            out_kernel_init=normal(init.out),
            **dtypes,
            rngs=rngs,
        )
        self.layer_norm2 = layer_norm(hidden, epsilon, **dtypes, rngs=rngs)
        self.mlp = EncoderMLP(
            hidden, intermediate, activation=activation, init=init, **dtypes, rngs=rngs
        )
        self.dropout = nnx.Dropout(dropout)

    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None,
        rngs: nnx.Rngs | None,
        *,
        causal: bool = False,
        output_attentions: bool = False,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """mask `[batch, length]` True for real tokens (None: all real); causal: each position
        sees only itself and earlier ones. Returns the layer's output, with its attention
        probabilities `[batch, heads, length, length]` when output_attentions."""
        deterministic = rngs is None
        rng = None if deterministic else rngs.dropout()
        post = self.post_norm
        h, probs = attend(
            self.self_attn,
            x if post else self.layer_norm1(x),
            mask=mask,
            causal=causal,
            rng=rng,
            output_attentions=output_attentions,
        )
        x = x + self.dropout(h, deterministic=deterministic, rngs=rngs)
        x = self.layer_norm1(x) if post else x
        h = checkpoint_name(self.mlp(x if post else self.layer_norm2(x)), MLP_OUTPUT)
        x = x + self.dropout(h, deterministic=deterministic, rngs=rngs)
        return layer_output(self.layer_norm2(x) if post else x, probs)


def layer_sizes(config: Any) -> dict[str, Any]:
    """A layer's sizes from a config's Hugging Face fields (hidden_size, num_attention_heads,
    intermediate_size, hidden_act, layer_norm_eps), as EncoderLayer takes them."""
    return dict(
        hidden=config.hidden_size,
        num_heads=config.num_attention_heads,
        intermediate=config.intermediate_size,
        activation=config.hidden_act,
        epsilon=config.layer_norm_eps,
    )


class Encoder(nnx.Module):
    """`num_layers` EncoderLayers in sequence (transformers' `encoder.layers`)."""

    def __init__(
        self,
        num_layers: int,
        *,
        remat: str = "none",
        scan: bool = False,
        rngs: nnx.Rngs,
        **layer_args,
    ):
        """remat: each layer's rematerialisation policy (ModelConfig.remat); scan: the layers as
        one scanned LayerStack (ModelConfig.scan_layers); layer_args: EncoderLayer's arguments,
        the same for every layer."""
        self.layers = layer_stack(
            lambda rngs: EncoderLayer(**layer_args, rngs=rngs), num_layers, scan=scan, rngs=rngs
        )
        self.remat = remat

    @classmethod
    def of(cls, tower: Any, config: Any, *, rngs: nnx.Rngs, **layer_args) -> Encoder:
        """The encoder of `tower`, a config with num_hidden_layers and `layer_sizes`' fields,
        in a model whose ModelConfig `config` gives remat, scan_layers and the dtypes (the same
        config for ViT; CLIPConfig for either of its towers); layer_args: EncoderLayer's
        others."""
        return cls(
            tower.num_hidden_layers,
            remat=config.remat,
            scan=config.scan_layers,
            **layer_sizes(tower),
            dtype=config.dtype,
            param_dtype=config.param_dtype,
            rngs=rngs,
            **layer_args,
        )

    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None = None,
        *,
        causal: bool = False,
        rngs: nnx.Rngs | None = None,
        output_attentions: bool = False,
    ) -> tuple[jax.Array, tuple[jax.Array, ...], tuple[jax.Array, ...] | None]:
        """x `[batch, length, hidden]` -> (the last layer's output, the hidden states: x then
        every layer's output, num_layers + 1 arrays `[batch, length, hidden]`, and with
        output_attentions every layer's attention probabilities `[batch, heads, length,
        length]`, else None)."""
        return run_layers(
            self.layers,
            x,
            self.remat,
            mask,
            rngs,
            output_attentions=output_attentions,
            causal=causal,
        )
