"""CLIP as flax.nnx modules, named like transformers' CLIPModel: text_model.{embeddings,
encoder, final_layer_norm}, vision_model.{embeddings, pre_layrnorm (transformers' spelling),
encoder, post_layernorm}, visual_projection, text_projection, logit_scale.

Both towers are the shared pre-LN encoder (polyformer.models.encoder); the vision tower's
embeddings are ViT's.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from polyformer.attention.layer import linear, logical
from polyformer.models.clip.config import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from polyformer.models.encoder import BaseModelOutputWithPooling, Encoder, EncoderInit
from polyformer.models.inputs import check_ids
from polyformer.models.layers import layer_norm, training_rngs
from polyformer.models.vit.config import size_pair
from polyformer.models.vit.model import VisionEmbeddings


@flax.struct.dataclass
class CLIPOutput:
    """logits_per_image `[images, texts]` and logits_per_text `[texts, images]`: the cosine
    similarities times exp(logit_scale); text_embeds `[texts, projection_dim]`, image_embeds
    `[images, projection_dim]`: the projected pooled outputs, L2-normalised (float32); the
    towers' outputs as get_text_features / get_image_features return them (pooler_output: the
    projection, unnormalised), which is what transformers 5 puts there."""

    logits_per_image: jax.Array
    logits_per_text: jax.Array
    text_embeds: jax.Array
    image_embeds: jax.Array
    text_model_output: BaseModelOutputWithPooling
    vision_model_output: BaseModelOutputWithPooling


def _encoder_init(tower: CLIPTextConfig | CLIPVisionConfig) -> EncoderInit:
    """transformers' CLIP initialisation, scaled by width and depth."""
    width, factor = tower.hidden_size, tower.initializer_factor
    in_std = width**-0.5 * (2 * tower.num_hidden_layers) ** -0.5 * factor
    return EncoderInit(qkv=in_std, out=width**-0.5 * factor, fc1=(2 * width) ** -0.5 * factor,
                       fc2=in_std)  # fmt: skip


def _encoder(tower, config: CLIPConfig, rngs: nnx.Rngs) -> Encoder:
    return Encoder.of(
        tower, config, kernel=config.tower_kernel(tower), init=_encoder_init(tower), rngs=rngs
    )


def _embed(count: int, width: int, axes: tuple, std: float, config: CLIPConfig, rngs: nnx.Rngs):
    return nnx.Embed(
        count,
        width,
        embedding_init=logical(nnx.initializers.normal(std), axes),
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        rngs=rngs,
    )


class CLIPTextEmbeddings(nnx.Module):
    """token_embedding + position_embedding."""

    def __init__(self, text: CLIPTextConfig, config: CLIPConfig, rngs: nnx.Rngs):
        std = 0.02 * text.initializer_factor
        width = text.hidden_size
        self.token_embedding = _embed(text.vocab_size, width, ("vocab", "embed"), std, config, rngs)
        self.position_embedding = _embed(
            text.max_position_embeddings, width, (None, "embed"), std, config, rngs
        )

    def __call__(self, input_ids: jax.Array, position_ids: jax.Array) -> jax.Array:
        return self.token_embedding(input_ids) + self.position_embedding(position_ids)


class CLIPTextTransformer(nnx.Module):
    """The text tower: causal pre-LN encoder, final_layer_norm, pooled at the end of text."""

    def __init__(self, config: CLIPConfig, *, rngs: nnx.Rngs):
        text = self.text_config = config.text_config
        self.embeddings = CLIPTextEmbeddings(text, config, rngs)
        self.encoder = _encoder(text, config, rngs)
        dtypes = dict(dtype=config.dtype, param_dtype=config.param_dtype)
        eps = text.layer_norm_eps
        self.final_layer_norm = layer_norm(text.hidden_size, eps, **dtypes, rngs=rngs)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        *,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> BaseModelOutputWithPooling:
        """input_ids `[batch, length]`; attention_mask `[batch, length]` 1 for real tokens, 0 for
        padding; position_ids `[batch | 1, length]` (default 0..length-1). Returns
        last_hidden_state `[batch, length, hidden]` and pooler_output `[batch, hidden]`, the
        state at each row's end-of-text token."""
        text = self.text_config
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got {tuple(input_ids.shape)}")
        length = input_ids.shape[1]
        if length > text.max_position_embeddings:
            raise ValueError(
                f"{length} tokens do not fit: the text model has max_position_embeddings="
                f"{text.max_position_embeddings}"
            )
        check_ids(input_ids, text.vocab_size, "input_ids")
        if position_ids is None:
            position_ids = jnp.arange(length)[None]
        mask = None if attention_mask is None else attention_mask.astype(bool)
        x = self.embeddings(input_ids, position_ids)
        x, hidden, attentions = self.encoder(
            x, mask, causal=True, rngs=rngs, output_attentions=output_attentions
        )
        x = self.final_layer_norm(x)
        if text.legacy_pooling:
            end = jnp.argmax(input_ids, axis=-1)
        else:
            end = jnp.argmax(input_ids == text.eos_token_id, axis=-1)
        pooled = jnp.take_along_axis(x, end[:, None, None], axis=1)[:, 0]
        return BaseModelOutputWithPooling.of(x, pooled, hidden, attentions, output_hidden_states)


class CLIPVisionTransformer(nnx.Module):
    """The vision tower: ViT embeddings (no patch bias), pre_layrnorm, pre-LN encoder, and
    post_layernorm on the CLS token."""

    def __init__(self, config: CLIPConfig, *, rngs: nnx.Rngs):
        vision = config.vision_config
        dtypes = dict(dtype=config.dtype, param_dtype=config.param_dtype)
        factor, width = vision.initializer_factor, vision.hidden_size
        normal = nnx.initializers.normal
        self.embeddings = VisionEmbeddings(
            width,
            image_size=size_pair(vision.image_size, "image_size"),
            patch_size=size_pair(vision.patch_size, "patch_size"),
            num_channels=vision.num_channels,
            patch_bias=False,
            patch_init=vision.initializer_range * factor,
            class_init=normal(width**-0.5 * factor),
            position_init=normal(vision.initializer_range * factor),
            **dtypes,
            rngs=rngs,
        )
        self.pre_layrnorm = layer_norm(width, vision.layer_norm_eps, **dtypes, rngs=rngs)
        self.encoder = _encoder(vision, config, rngs)
        self.post_layernorm = layer_norm(width, vision.layer_norm_eps, **dtypes, rngs=rngs)

    def __call__(
        self,
        pixel_values: jax.Array,
        *,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> BaseModelOutputWithPooling:
        """pixel_values `[batch, channels, height, width]` -> last_hidden_state
        `[batch, 1 + patches, hidden]` and pooler_output `[batch, hidden]`."""
        x = self.pre_layrnorm(self.embeddings(pixel_values, interpolate_pos_encoding))
        x, hidden, attentions = self.encoder(x, rngs=rngs, output_attentions=output_attentions)
        pooled = self.post_layernorm(x[:, 0])
        return BaseModelOutputWithPooling.of(x, pooled, hidden, attentions, output_hidden_states)


def _normalise(x: jax.Array) -> jax.Array:
    """x `[n, dim]` divided by its L2 norm per row."""
    return x / jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))


class CLIPModel(nnx.Module):
    """CLIP: both towers, their projections into one embedding space, and the learned
    temperature `logit_scale` (a 0-d parameter in log space).

    Built in evaluation mode; `model.train()` turns attention dropout on, and then every call
    needs `rngs=nnx.Rngs(dropout=...)`.
    """

    def __init__(self, config: CLIPConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.text_model = CLIPTextTransformer(config, rngs=rngs)
        self.vision_model = CLIPVisionTransformer(config, rngs=rngs)
        text_width = config.text_config.hidden_size
        vision_width = config.vision_config.hidden_size
        factor = config.initializer_factor

        def projection(width: int) -> nnx.Linear:
            return linear(
                width,
                config.projection_dim,
                ("embed", None),
                kernel_init=nnx.initializers.normal(width**-0.5 * factor),
                use_bias=False,
                dtype=config.dtype,
                param_dtype=config.param_dtype,
                rngs=rngs,
            )

        self.visual_projection = projection(vision_width)
        self.text_projection = projection(text_width)
        self.logit_scale = nnx.Param(jnp.asarray(config.logit_scale_init_value, config.param_dtype))
        self.deterministic = True  # flipped by model.train() / model.eval()

    def get_text_features(
        self, input_ids: jax.Array, *args: Any, rngs: nnx.Rngs | None = None, **options: Any
    ) -> BaseModelOutputWithPooling:
        """The text tower's output (the arguments of CLIPTextTransformer's call: attention_mask,
        position_ids, output_hidden_states, output_attentions) with pooler_output replaced by
        its projection `[batch, projection_dim]` (float32, not normalised), as transformers 5
        returns it."""
        out = self.text_model(input_ids, *args, rngs=training_rngs(self, rngs), **options)
        projected = self.text_projection(out.pooler_output).astype(jnp.float32)
        return out.replace(pooler_output=projected)

    def get_image_features(
        self, pixel_values: jax.Array, *, rngs: nnx.Rngs | None = None, **options: Any
    ) -> BaseModelOutputWithPooling:
        """The vision tower's output (options as CLIPVisionTransformer's call:
        interpolate_pos_encoding, output_hidden_states, output_attentions) with pooler_output
        replaced by its projection `[batch, projection_dim]` (float32, not normalised), as
        transformers 5 returns it."""
        out = self.vision_model(pixel_values, rngs=training_rngs(self, rngs), **options)
        projected = self.visual_projection(out.pooler_output).astype(jnp.float32)
        return out.replace(pooler_output=projected)

    def __call__(
        self,
        input_ids: jax.Array,
        pixel_values: jax.Array,
        attention_mask: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        *,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> CLIPOutput:
        """input_ids `[texts, length]` (attention_mask, position_ids as get_text_features) and
        pixel_values `[images, channels, height, width]` -> CLIPOutput."""
        args: dict[str, Any] = dict(
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            rngs=rngs,
        )
        image = self.get_image_features(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **args
        )
        text = self.get_text_features(input_ids, attention_mask, position_ids, **args)
        image_embeds = _normalise(image.pooler_output)
        text_embeds = _normalise(text.pooler_output)
        scale = jnp.exp(self.logit_scale[...].astype(jnp.float32))
        logits_per_text = jnp.dot(text_embeds, image_embeds.T) * scale
        return CLIPOutput(
            logits_per_image=logits_per_text.T,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text,
            vision_model_output=image,
        )
