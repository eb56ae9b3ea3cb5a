"""Wav2Vec2 as flax.nnx modules, named like transformers' Wav2Vec2ForCTC so that the conversion
table reads like its state dict: wav2vec2.{feature_extractor.conv_layers[i].{conv, layer_norm},
feature_projection.{layer_norm, projection}, masked_spec_embed, encoder.{pos_conv_embed,
layer_norm, layers[i].{attention, layer_norm, feed_forward, final_layer_norm}}}, lm_head.

Audio is `[batch, samples]` at 16 kHz; every activation is channels-last `[batch, frames,
channels]` (HF's convolutions run channels-first; the conversion transposes their kernels).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from polyformer.attention import AttentionKernel, MultiHeadAttention
from polyformer.attention.layer import linear
from polyformer.attention.layout import constrain
from polyformer.models import layers
from polyformer.models.activations import ACTIVATIONS
from polyformer.models.wav2vec2.config import Wav2Vec2Config

# torch's nn.GroupNorm and nn.LayerNorm default, which the feature encoder's norms keep (they
# ignore config.layer_norm_eps).
_CONV_NORM_EPS = 1e-5


@flax.struct.dataclass
class Wav2Vec2BaseModelOutput:
    """last_hidden_state `[batch, frames, hidden_size]`; extract_features `[batch, frames,
    conv_dim[-1]]`, the feature encoder's output after the feature projection's layer norm;
    hidden_states, when asked for: num_hidden_layers + 1 arrays `[batch, frames, hidden_size]`,
    the first layer's input then each layer's output (as transformers reports them: for the
    stable-layer-norm encoder the last one is before the final layer_norm); attentions, when
    asked for: num_hidden_layers arrays `[batch, num_attention_heads, frames, frames]` (float32),
    each layer's attention probabilities."""

    last_hidden_state: jax.Array
    extract_features: jax.Array
    hidden_states: tuple[jax.Array, ...] | None = None
    attentions: tuple[jax.Array, ...] | None = None


@flax.struct.dataclass
class CTCOutput:
    """logits `[batch, frames, vocab_size]` (float32); hidden_states and attentions as in
    Wav2Vec2BaseModelOutput."""

    logits: jax.Array
    hidden_states: tuple[jax.Array, ...] | None = None
    attentions: tuple[jax.Array, ...] | None = None


def feat_extract_output_lengths(config: Wav2Vec2Config, lengths):
    """Frames the feature encoder makes of `lengths` samples (an int, a numpy or jax integer
    array: the CTC input lengths of a batch):
    (length - kernel) // stride + 1 per conv, as HF's `_get_feat_extract_output_lengths`."""
    for kernel, stride in zip(config.conv_kernel, config.conv_stride, strict=True):
        lengths = (lengths - kernel) // stride + 1
    return lengths


def spec_augment_mask(
    rng: jax.Array,
    lengths: jax.Array,
    size: int,
    *,
    prob: float,
    span: int,
    min_masks: int,
) -> jax.Array:
    """SpecAugment spans, as HF's `_compute_mask_indices` draws them: boolean `[batch, size]`.

    Row b gets n_b = int(prob * lengths[b] / span + u) spans (u ~ U[0, 1), one draw for the
    batch), at least min_masks, capped so that they fit in the row, with distinct starts drawn
    uniformly from [0, lengths[b] - span]; spans may overlap. lengths `[batch]` int.
    """
    if span < 1 or span > size:
        raise ValueError(f"mask length {span} must be in [1, {size}] (the axis it masks)")
    rng_count, rng_starts = jax.random.split(rng)
    epsilon = jax.random.uniform(rng_count)

    def count(length):
        n = jnp.maximum(jnp.floor(prob * length / span + epsilon).astype(jnp.int32), min_masks)
        n = jnp.where(n * span > size, size // span, n)
        return jnp.minimum(n, jnp.maximum(length - (span - 1), 0))

    # Static bound on the spans of any row (a full row, u -> 1).
    most = max(min(max(int(prob * size / span + 1.0), min_masks), size // span), 1)
    counts = count(lengths)
    positions = jnp.arange(size)
    # Distinct uniform starts: the `most` smallest of random keys over the valid starts.
    keys = jax.random.uniform(rng_starts, (lengths.shape[0], size))
    keys = jnp.where(positions[None] <= lengths[:, None] - span, keys, jnp.inf)
    starts = jnp.argsort(keys, axis=-1)[:, :most]  # [batch, most]
    used = jnp.arange(most)[None] < counts[:, None]
    inside = (positions[None, None] >= starts[..., None]) & (
        positions[None, None] < starts[..., None] + span
    )
    return jnp.any(inside & used[..., None], axis=1)


def frame_mask(config: Wav2Vec2Config, attention_mask: jax.Array, num_frames: int) -> jax.Array:
    """Sample mask `[batch, samples]` (1 for audio, 0 for padding at the end) -> boolean frame mask
    `[batch, num_frames]`: the first feat_extract_output_lengths(sum of the row) frames are True.
    HF's `_get_feature_vector_attention_mask`; a row shorter than the receptive field gets no
    frame (HF would mark its last frame)."""
    lengths = feat_extract_output_lengths(config, attention_mask.astype(jnp.int32).sum(-1))
    return jnp.arange(num_frames)[None, :] < lengths[:, None]


class Wav2Vec2ConvLayer(nnx.Module):
    """One feature-encoder layer: conv (no padding) -> optional norm -> activation, on x
    `[batch, length, in_dim]` -> `[batch, (length - kernel) // stride + 1, out_dim]`.

    norm: None, "group" (GroupNorm with one group per channel: each channel normalised over
    time) or "layer" (LayerNorm over channels, per frame).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kernel: int,
        stride: int,
        *,
        use_bias: bool,
        norm: str | None,
        activation: str,
        dtype: Any,
        param_dtype: Any,
        rngs: nnx.Rngs,
    ):
        self.conv = nnx.Conv(
            in_dim,
            out_dim,
            kernel_size=(kernel,),
            strides=(stride,),
            padding="VALID",
            use_bias=use_bias,
            kernel_init=nnx.initializers.he_normal(),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        dtypes = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if norm == "group":
            self.layer_norm = nnx.GroupNorm(
                out_dim, num_groups=out_dim, epsilon=_CONV_NORM_EPS, use_fast_variance=False,
                **dtypes,
            )  # fmt: skip
        elif norm == "layer":
            self.layer_norm = layers.layer_norm(out_dim, _CONV_NORM_EPS, **dtypes)
        else:
            self.layer_norm = None
        self.act = ACTIVATIONS[activation]

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv(x)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return self.act(x)


class Wav2Vec2FeatureEncoder(nnx.Module):
    """The convolutional stack: audio `[batch, samples]` -> `[batch, frames, conv_dim[-1]]`."""

    def __init__(self, config: Wav2Vec2Config, *, rngs: nnx.Rngs):
        c = config
        dims = (1, *c.conv_dim)
        layers = []
        for i, (kernel, stride) in enumerate(zip(c.conv_kernel, c.conv_stride, strict=True)):
            # GroupNorm on the first conv only; LayerNorm after every one.
            norm = "layer" if c.feat_extract_norm == "layer" else ("group" if i == 0 else None)
            layers.append(
                Wav2Vec2ConvLayer(
                    dims[i],
                    dims[i + 1],
                    kernel,
                    stride,
                    use_bias=c.conv_bias,
                    norm=norm,
                    activation=c.feat_extract_activation,
                    dtype=c.dtype,
                    param_dtype=c.param_dtype,
                    rngs=rngs,
                )
            )
        self.conv_layers = nnx.List(layers)

    def __call__(self, input_values: jax.Array) -> jax.Array:
        x = input_values[..., None]
        for layer in self.conv_layers:
            x = layer(x)
        return x


class Wav2Vec2FeatureProjection(nnx.Module):
    """layer_norm -> projection -> dropout: `[batch, frames, conv_dim[-1]]` ->
    (`[batch, frames, hidden_size]`, the normalised features)."""

    def __init__(self, config: Wav2Vec2Config, *, rngs: nnx.Rngs):
        c = config
        dtypes = dict(dtype=c.dtype, param_dtype=c.param_dtype, rngs=rngs)
        self.layer_norm = layers.layer_norm(c.conv_dim[-1], c.layer_norm_eps, **dtypes)
        self.projection = linear(
            c.conv_dim[-1],
            c.hidden_size,
            (None, "embed"),
            kernel_init=nnx.initializers.lecun_uniform(),
            **dtypes,
        )
        self.dropout = nnx.Dropout(c.feat_proj_dropout)

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None) -> tuple[jax.Array, jax.Array]:
        normed = self.layer_norm(x)
        x = self.dropout(self.projection(normed), deterministic=rngs is None, rngs=rngs)
        return x, normed


def weight_norm_kernel(weight_g: jax.Array, weight_v: jax.Array) -> jax.Array:
    """torch's weight_norm with dim=2: weight_g `[1, 1, K]`, weight_v `[out, in / groups, K]`
    (PyTorch Conv1d layout) -> the kernel g * v / ||v|| (norm over out and in, per tap), laid out
    `[K, in / groups, out]` for a channels-last convolution."""
    norm = jnp.sqrt(jnp.sum(jnp.square(weight_v), axis=(0, 1), keepdims=True))
    return jnp.transpose(weight_g * weight_v / norm, (2, 1, 0))


class Wav2Vec2PositionalConvEmbedding(nnx.Module):
    """Grouped conv over time with weight norm, padded K // 2 on both sides (the last frame
    dropped when K is even, HF's SamePad), then the activation: `[batch, frames, hidden]` ->
    `[batch, frames, hidden]`.

    The weight-norm factors stay separate parameters, as in PyTorch: fine-tuning updates g and v,
    and saving writes them back unchanged.
    """

    def __init__(self, config: Wav2Vec2Config, *, rngs: nnx.Rngs):
        c = config
        k, groups, width = c.num_conv_pos_embeddings, c.num_conv_pos_embedding_groups, c.hidden_size
        # HF's init: v ~ N(0, (2 / sqrt(K * hidden))^2), g = ||v|| per tap.
        std = 2.0 * (1.0 / (k * width)) ** 0.5
        v = std * jax.random.normal(rngs.params(), (width, width // groups, k), c.param_dtype)
        self.weight_v = nnx.Param(v)
        self.weight_g = nnx.Param(jnp.sqrt(jnp.sum(jnp.square(v), axis=(0, 1), keepdims=True)))
        self.bias = nnx.Param(jnp.zeros((width,), c.param_dtype))
        self.kernel_size = k
        self.groups = groups
        self.dtype = c.dtype
        self.act = ACTIVATIONS[c.feat_extract_activation]

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = weight_norm_kernel(self.weight_g[...], self.weight_v[...]).astype(self.dtype)
        pad = self.kernel_size // 2
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel,
            window_strides=(1,),
            padding=[(pad, pad)],
            dimension_numbers=("NWC", "WIO", "NWC"),
            feature_group_count=self.groups,
        )
        y = y + self.bias[...].astype(self.dtype)
        if self.kernel_size % 2 == 0:
            y = y[:, :-1]
        return self.act(y)


class Wav2Vec2FeedForward(nnx.Module):
    """intermediate_dense -> activation -> dropout -> output_dense -> dropout."""

    def __init__(self, config: Wav2Vec2Config, *, rngs: nnx.Rngs):
        c = config
        dtypes = dict(dtype=c.dtype, param_dtype=c.param_dtype, rngs=rngs)
        init = nnx.initializers.normal(c.initializer_range)
        self.intermediate_dense = linear(
            c.hidden_size, c.intermediate_size, ("embed", "mlp"), kernel_init=init, **dtypes
        )
        self.output_dense = linear(
            c.intermediate_size, c.hidden_size, ("mlp", "embed"), kernel_init=init, **dtypes
        )
        self.act = ACTIVATIONS[c.hidden_act]
        self.intermediate_dropout = nnx.Dropout(c.activation_dropout)
        self.output_dropout = nnx.Dropout(c.hidden_dropout)

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
        deterministic = rngs is None
        x = constrain(self.act(self.intermediate_dense(x)), layers.MLP_HIDDEN)
        x = self.intermediate_dropout(x, deterministic=deterministic, rngs=rngs)
        x = self.output_dense(x)
        return self.output_dropout(x, deterministic=deterministic, rngs=rngs)


class Wav2Vec2EncoderLayer(nnx.Module):
    """One transformer layer on x `[batch, frames, hidden]`.

    stable=False (post-LN, HF's Wav2Vec2EncoderLayer): x = layer_norm(x + attn(x)), then
    final_layer_norm(x + ff(x)). stable=True (pre-LN, Wav2Vec2EncoderLayerStableLayerNorm):
    x = x + attn(layer_norm(x)), then x + ff(final_layer_norm(x)).
    """

    def __init__(
        self, config: Wav2Vec2Config, *, stable: bool, kernel: AttentionKernel, rngs: nnx.Rngs
    ):
        c = config
        dtypes = dict(dtype=c.dtype, param_dtype=c.param_dtype)
        self.attention = MultiHeadAttention(
            c.num_attention_heads,
            c.hidden_size,
            kernel=kernel,
            kernel_init=nnx.initializers.normal(c.initializer_range),
            **dtypes,
            rngs=rngs,
        )
        self.dropout = nnx.Dropout(c.hidden_dropout)
        self.layer_norm = layers.layer_norm(c.hidden_size, c.layer_norm_eps, **dtypes, rngs=rngs)
        self.feed_forward = Wav2Vec2FeedForward(c, rngs=rngs)
        self.final_layer_norm = layers.layer_norm(
            c.hidden_size, c.layer_norm_eps, **dtypes, rngs=rngs
        )
        self.stable = stable

    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None,
        rngs: nnx.Rngs | None,
        *,
        output_attentions: bool = False,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """mask `[batch, frames]` True for real frames (None: all real). Returns the layer's
        output, with its attention probabilities `[batch, heads, frames, frames]` when
        output_attentions."""
        rng = None if rngs is None else rngs.dropout()
        h = self.layer_norm(x) if self.stable else x
        h, probs = layers.attend(
            self.attention, h, mask=mask, rng=rng, output_attentions=output_attentions
        )
        x = x + self.dropout(h, deterministic=rngs is None, rngs=rngs)
        if self.stable:
            h = self.feed_forward(self.final_layer_norm(x), rngs)
            return layers.layer_output(x + checkpoint_name(h, layers.MLP_OUTPUT), probs)
        x = self.layer_norm(x)
        h = checkpoint_name(self.feed_forward(x, rngs), layers.MLP_OUTPUT)
        return layers.layer_output(self.final_layer_norm(x + h), probs)


class Wav2Vec2Encoder(nnx.Module):
    """Positional conv embedding, the layer norm (before the layers in the post-LN layout, after
    them in the stable one), dropout and the layers, with LayerDrop in training."""

    def __init__(self, config: Wav2Vec2Config, *, rngs: nnx.Rngs):
        c = config
        self.pos_conv_embed = Wav2Vec2PositionalConvEmbedding(c, rngs=rngs)
        self.layer_norm = layers.layer_norm(
            c.hidden_size, c.layer_norm_eps, dtype=c.dtype, param_dtype=c.param_dtype, rngs=rngs
        )
        self.dropout = nnx.Dropout(c.hidden_dropout)
        self.layers = layers.layer_stack(
            lambda rngs: Wav2Vec2EncoderLayer(
                c, stable=c.do_stable_layer_norm, kernel=c.kernel, rngs=rngs
            ),
            c.num_hidden_layers,
            scan=c.scan_layers,
            rngs=rngs,
        )
        self.stable = c.do_stable_layer_norm
        self.layerdrop = c.layerdrop
        self.remat = c.remat

    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None,
        rngs: nnx.Rngs | None,
        *,
        output_attentions: bool = False,
    ) -> tuple[jax.Array, tuple[jax.Array, ...], tuple[jax.Array, ...] | None]:
        """x `[batch, frames, hidden]`, mask `[batch, frames]` -> (last hidden state, the
        hidden states transformers reports, and with output_attentions each layer's attention
        probabilities, else None). A layer LayerDrop skips still reports the probabilities it
        computed (transformers leaves it out of its tuple)."""
        if mask is not None:
            # HF zeroes padded frames so that the positional conv does not smear them inward.
            x = jnp.where(mask[..., None], x, jnp.zeros((), x.dtype))
        x = x + self.pos_conv_embed(x)
        if not self.stable:
            x = self.layer_norm(x)
        x = self.dropout(x, deterministic=rngs is None, rngs=rngs)

        def layerdrop(x: jax.Array, out: jax.Array, rngs: nnx.Rngs) -> jax.Array:
            """Training skips each layer with probability layerdrop (a scanned layer is
            computed, then its output dropped)."""
            skip = jax.random.uniform(rngs.dropout()) < self.layerdrop
            return jnp.where(skip, x, out)

        x, hidden, attentions = layers.run_layers(
            self.layers,
            x,
            self.remat,
            mask,
            rngs,
            output_attentions=output_attentions,
            after=layerdrop if rngs is not None and self.layerdrop > 0.0 else None,
        )
        if self.stable:
            x = self.layer_norm(x)
        return x, hidden, attentions


class Wav2Vec2Model(nnx.Module):
    """The bare Wav2Vec2 encoder: audio -> hidden states per frame (20 ms at 16 kHz).

    Built in evaluation mode, as transformers' from_pretrained returns models; `model.train()`
    turns dropout, LayerDrop and SpecAugment on, and then every call needs
    `rngs=nnx.Rngs(dropout=...)`.
    """

    def __init__(self, config: Wav2Vec2Config, *, rngs: nnx.Rngs):
        c = config
        self.config = config
        self.feature_extractor = Wav2Vec2FeatureEncoder(c, rngs=rngs)
        self.feature_projection = Wav2Vec2FeatureProjection(c, rngs=rngs)
        if c.has_masked_spec_embed:
            self.masked_spec_embed = nnx.Param(
                jax.random.uniform(rngs.params(), (c.hidden_size,), c.param_dtype)
            )
        self.encoder = Wav2Vec2Encoder(c, rngs=rngs)
        self.deterministic = True  # flipped by model.train() / model.eval()

    def __call__(
        self,
        input_values: jax.Array,
        attention_mask: jax.Array | None = None,
        mask_time_indices: jax.Array | None = None,
        *,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> Wav2Vec2BaseModelOutput:
        """input_values `[batch, samples]` float audio (normalised as the feature extractor
        does); attention_mask `[batch, samples]`, 1 for audio and 0 for padding at the end
        (None: no padding, how the group-norm models are used); mask_time_indices
        `[batch, frames]` boolean: frames replaced by masked_spec_embed (SpecAugment; without
        it, training mode draws them as HF does when mask_time_prob > 0, and feature spans when
        mask_feature_prob > 0). output_hidden_states, output_attentions: return the hidden states
        and attention probabilities (see Wav2Vec2BaseModelOutput). rngs: needed in training
        mode, for dropout, LayerDrop and SpecAugment."""
        if input_values.ndim != 2:
            raise ValueError(
                f"input_values must be [batch, samples], got shape {tuple(input_values.shape)}"
            )
        if attention_mask is not None and attention_mask.shape != input_values.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, expected "
                f"{tuple(input_values.shape)} like input_values"
            )
        frames = int(feat_extract_output_lengths(self.config, input_values.shape[1]))
        if frames < 1:
            raise ValueError(
                f"{input_values.shape[1]} samples are fewer than the feature encoder's receptive "
                "field: no frame would come out"
            )
        if mask_time_indices is not None:
            self._check_spec_mask(mask_time_indices, (input_values.shape[0], frames))
        rngs = layers.training_rngs(self, rngs)
        features = self.feature_extractor(input_values.astype(self.config.dtype))
        mask = None
        if attention_mask is not None:
            mask = frame_mask(self.config, attention_mask, features.shape[1])
        x, extract_features = self.feature_projection(features, rngs)
        if self.config.apply_spec_augment:
            x = self._spec_augment(x, mask, mask_time_indices, rngs)
        x, hidden, attentions = self.encoder(x, mask, rngs, output_attentions=output_attentions)
        return Wav2Vec2BaseModelOutput(
            last_hidden_state=x,
            extract_features=extract_features,
            hidden_states=hidden if output_hidden_states else None,
            attentions=attentions,
        )

    def _spec_augment(
        self,
        x: jax.Array,
        mask: jax.Array | None,
        mask_time_indices: jax.Array | None,
        rngs: nnx.Rngs | None,
    ) -> jax.Array:
        """HF's `_mask_hidden_states` on x `[batch, frames, hidden]`: given mask_time_indices
        replace those frames by masked_spec_embed; in training draw time spans (mask_time_prob,
        within each row's real frames) and feature spans (mask_feature_prob, set to 0)."""
        c = self.config
        batch, frames, width = x.shape
        if mask_time_indices is None and rngs is not None and c.mask_time_prob > 0.0:
            lengths = jnp.full((batch,), frames) if mask is None else mask.sum(-1)
            mask_time_indices = spec_augment_mask(
                rngs.dropout(), lengths, frames, prob=c.mask_time_prob,
                span=c.mask_time_length, min_masks=c.mask_time_min_masks,
            )  # fmt: skip
        if mask_time_indices is not None:
            embed = self.masked_spec_embed[...].astype(x.dtype)
            x = jnp.where(mask_time_indices[..., None], embed, x)
        if rngs is not None and c.mask_feature_prob > 0.0:
            features = spec_augment_mask(
                rngs.dropout(), jnp.full((batch,), width), width, prob=c.mask_feature_prob,
                span=c.mask_feature_length, min_masks=c.mask_feature_min_masks,
            )  # fmt: skip
            x = jnp.where(features[:, None, :], jnp.zeros((), x.dtype), x)
        return x

    def _check_spec_mask(self, mask_time_indices: jax.Array, shape: tuple[int, int]) -> None:
        if not self.config.has_masked_spec_embed:
            raise ValueError(
                "mask_time_indices needs masked_spec_embed, which this model lacks: its config "
                "has mask_time_prob == mask_feature_prob == 0"
            )
        if tuple(mask_time_indices.shape) != tuple(shape):
            raise ValueError(
                f"mask_time_indices has shape {tuple(mask_time_indices.shape)}, expected "
                f"[batch, frames] = {tuple(shape)}"
            )


class Wav2Vec2ForCTC(nnx.Module):
    """Wav2Vec2 with its CTC head: logits over `vocab_size` characters for every frame (index
    pad_token_id is the CTC blank). Built in evaluation mode (see Wav2Vec2Model)."""

    def __init__(self, config: Wav2Vec2Config, *, rngs: nnx.Rngs):
        c = config
        self.config = config
        self.wav2vec2 = Wav2Vec2Model(c, rngs=rngs)
        self.dropout = nnx.Dropout(c.final_dropout)
        self.lm_head = linear(
            c.hidden_size,
            c.vocab_size,
            ("embed", "vocab"),
            kernel_init=nnx.initializers.normal(c.initializer_range),
            dtype=c.dtype,
            param_dtype=c.param_dtype,
            rngs=rngs,
        )
        self.deterministic = True

    def __call__(
        self, input_values: jax.Array, *args: Any, rngs: nnx.Rngs | None = None, **options: Any
    ) -> CTCOutput:
        """The arguments of Wav2Vec2Model.__call__ (attention_mask, mask_time_indices,
        output_hidden_states, output_attentions, rngs); returns float32 logits `[batch, frames,
        vocab_size]`. Frames past feat_extract_output_lengths(samples of a row) are padding."""
        rngs = layers.training_rngs(self, rngs)
        out = self.wav2vec2(input_values, *args, rngs=rngs, **options)
        x = self.dropout(out.last_hidden_state, deterministic=rngs is None, rngs=rngs)
        kernel = self.lm_head.kernel[...].astype(x.dtype)
        logits = jnp.dot(x, kernel, preferred_element_type=jnp.float32)
        logits = logits + self.lm_head.bias[...].astype(jnp.float32)
        return CTCOutput(logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)


def build(config: Wav2Vec2Config, *, rngs: nnx.Rngs) -> Wav2Vec2ForCTC | Wav2Vec2Model:
    """The model class config.architectures names (Wav2Vec2ForCTC or Wav2Vec2Model)."""
    classes = {"Wav2Vec2ForCTC": Wav2Vec2ForCTC, "Wav2Vec2Model": Wav2Vec2Model}
    return classes[config.architecture](config, rngs=rngs)
