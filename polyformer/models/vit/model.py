"""ViT as flax.nnx modules: transformers' ViTModel and ViTForImageClassification.

Parameter tree: embeddings.{patch_embedding, class_embedding, position_embedding},
encoder.layers[i] (polyformer.models.encoder), layernorm, then `pooler.dense` (ViTModel) or
`classifier` (ViTForImageClassification). convert.py maps transformers' names onto it.
CLIP's vision tower reuses `VisionEmbeddings`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from polyformer.attention.layer import logical
from polyformer.models.activations import ACTIVATIONS
from polyformer.models.encoder import BaseModelOutputWithPooling, Encoder, EncoderInit
from polyformer.models.layers import dense_head, layer_norm, training_rngs
from polyformer.models.vit.config import ViTConfig, size_pair


@flax.struct.dataclass
class ImageClassifierOutput:
    """logits `[batch, num_labels]` (float32); hidden_states, when asked for: num_hidden_layers + 1
    arrays `[batch, 1 + patches, hidden_size]`, the embeddings then each layer's output (before
    the final layernorm, as transformers reports them); attentions, when asked for:
    num_hidden_layers arrays `[batch, num_attention_heads, 1 + patches, 1 + patches]` (float32),
    each layer's attention probabilities."""

    logits: jax.Array
    hidden_states: tuple[jax.Array, ...] | None = None
    attentions: tuple[jax.Array, ...] | None = None


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys' cubic convolution weights of the four taps at offsets -1, 0, 1, 2 from the sample
    floor, t `[n]` the fractional positions -> `[n, 4]`. a = -0.75 as in PyTorch (not -0.5)."""

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """float64 `[out_size, in_size]` M such that M @ x resizes x along its first axis as
    torch.nn.functional.interpolate(mode="bicubic", align_corners=False, size=...) does: source
    coordinate (i + 0.5) * in/out - 0.5, taps beyond the border clamped to the edge."""
    source = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    floor = np.floor(source)
    weights = _cubic_weights(source - floor)
    taps = np.clip(floor[:, None].astype(int) + np.arange(-1, 3), 0, in_size - 1)
    matrix = np.zeros((out_size, in_size))
    np.add.at(matrix, (np.repeat(np.arange(out_size), 4), taps.ravel()), weights.ravel())
    return matrix


def interpolate_position_grid(
    grid: jax.Array, size: tuple[int, int], dtype: Any = jnp.float32
) -> jax.Array:
    """Bicubic resize of position embeddings laid out on the patch grid, `[h, w, hidden]` ->
    `[size[0], size[1], hidden]`, as transformers' interpolate_pos_encoding does it."""
    rows = jnp.asarray(bicubic_matrix(grid.shape[0], size[0]), dtype)
    cols = jnp.asarray(bicubic_matrix(grid.shape[1], size[1]), dtype)
    return jnp.einsum("ih,hwd,jw->ijd", rows, grid.astype(dtype), cols)


class VisionEmbeddings(nnx.Module):
    """Patches -> tokens: a conv with stride = kernel = patch size, a class token in front,
    position embeddings added (bicubically resized for other image sizes on request).

    Parameters: patch_embedding (nnx.Conv, kernel `[ph, pw, channels, hidden]`), class_embedding
    `[hidden]`, position_embedding `[1 + patches, hidden]`.
    """

    def __init__(
        self,
        hidden: int,
        *,
        image_size: tuple[int, int],
        patch_size: tuple[int, int],
        num_channels: int,
        patch_bias: bool,
        patch_init: float,
        class_init: nnx.Initializer,
        position_init: nnx.Initializer,
        dtype: Any,
        param_dtype: Any,
        rngs: nnx.Rngs,
    ):
        self.image_size, self.patch_size, self.num_channels = image_size, patch_size, num_channels
        self.grid = (image_size[0] // patch_size[0], image_size[1] // patch_size[1])
        self.patch_embedding = nnx.Conv(
            num_channels,
            hidden,
            kernel_size=patch_size,
            strides=patch_size,
            padding="VALID",
            use_bias=patch_bias,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=logical(nnx.initializers.normal(patch_init), (None, None, None, "embed")),
            bias_init=logical(nnx.initializers.zeros_init(), ("embed",)),
            rngs=rngs,
        )
        self.class_embedding = nnx.Param(
            logical(class_init, ("embed",))(rngs.params(), (hidden,), param_dtype)
        )
        positions = 1 + self.grid[0] * self.grid[1]
        self.position_embedding = nnx.Param(
            logical(position_init, (None, "embed"))(rngs.params(), (positions, hidden), param_dtype)
        )
        self.dtype = dtype

    def _positions(self, grid: tuple[int, int]) -> jax.Array:
        """`[1 + grid[0] * grid[1], hidden]` position embeddings for a patch grid."""
        table = self.position_embedding[...]
        if grid == self.grid:
            return table
        patches = table[1:].reshape(*self.grid, -1)
        resized = interpolate_position_grid(patches, grid).reshape(grid[0] * grid[1], -1)
        return jnp.concatenate([table[:1], resized.astype(table.dtype)])

    def __call__(self, pixel_values: jax.Array, interpolate_pos_encoding: bool) -> jax.Array:
        """pixel_values `[batch, channels, height, width]` -> `[batch, 1 + patches, hidden]`.

        Without interpolate_pos_encoding the image must be `image_size`; with it, any size of at
        least one patch, whose patch grid (height // ph, width // pw; pixels beyond the last
        whole patch are not seen, as in transformers) gets resized position embeddings.
        """
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.num_channels:
            raise ValueError(
                f"pixel_values must be [batch, {self.num_channels}, height, width], got shape "
                f"{tuple(pixel_values.shape)}"
            )
        height, width = pixel_values.shape[2:]
        if not interpolate_pos_encoding and (height, width) != self.image_size:
            raise ValueError(
                f"input image size ({height}*{width}) does not match the model's "
                f"({self.image_size[0]}*{self.image_size[1]}); pass interpolate_pos_encoding=True "
                "to resize the position embeddings"
            )
        grid = (height // self.patch_size[0], width // self.patch_size[1])
        if 0 in grid:
            raise ValueError(f"an image of {height}*{width} is smaller than one patch")
        x = jnp.transpose(pixel_values, (0, 2, 3, 1)).astype(self.dtype or jnp.float32)
        x = self.patch_embedding(x)
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        cls = jnp.broadcast_to(self.class_embedding[...], (x.shape[0], 1, x.shape[-1]))
        x = jnp.concatenate([cls.astype(x.dtype), x], axis=1)
        return x + self._positions(grid).astype(x.dtype)


class ViTPooler(nnx.Module):
    """pooler_act(dense(CLS)): `[batch, length, hidden_size]` -> `[batch, pooler_output_size]`."""

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        self.dense = dense_head(config, config.pooler_output_size, rngs)
        self.act = ACTIVATIONS[config.pooler_act]

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.act(self.dense(x[:, 0]))


class ViTModel(nnx.Module):
    """The bare ViT encoder: embeddings, pre-LN layers, final layernorm, and (add_pooling_layer)
    the pooler `tanh(dense(CLS))` of transformers' ViTModel.

    Built in evaluation mode; `model.train()` turns dropout on, and then every call needs
    `rngs=nnx.Rngs(dropout=...)`.
    """

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        self.config = config = dataclasses.replace(config, architectures=(type(self).__name__,))
        self.embeddings, self.encoder, self.layernorm = _vit_body(config, rngs)
        self.dropout = nnx.Dropout(config.hidden_dropout_prob)
        if config.add_pooling_layer:
            self.pooler = ViTPooler(config, rngs=rngs)
        self.deterministic = True  # flipped by model.train() / model.eval()

    def __call__(
        self,
        pixel_values: jax.Array,
        *,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> BaseModelOutputWithPooling:
        """pixel_values `[batch, num_channels, height, width]` (height, width = image_size unless
        interpolate_pos_encoding). output_hidden_states, output_attentions: return the hidden
        states and attention probabilities (see ImageClassifierOutput). rngs: needed in training
        mode, for dropout."""
        rngs = training_rngs(self, rngs)
        x = self.embeddings(pixel_values, interpolate_pos_encoding)
        x = self.dropout(x, deterministic=rngs is None, rngs=rngs)
        x, hidden, attentions = self.encoder(x, rngs=rngs, output_attentions=output_attentions)
        x = self.layernorm(x)
        pooled = self.pooler(x) if self.config.add_pooling_layer else None
        return BaseModelOutputWithPooling.of(x, pooled, hidden, attentions, output_hidden_states)


class ViTForImageClassification(nnx.Module):
    """ViT with a linear classifier on the final-layernormed CLS token.

    Parameters: vit.{embeddings, encoder, layernorm}, classifier. Built in evaluation mode;
    `model.train()` turns dropout on, and then every call needs `rngs=nnx.Rngs(dropout=...)`.
    """

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        self.config = config = dataclasses.replace(config, architectures=(type(self).__name__,))
        self.vit = ViTModel(dataclasses.replace(config, add_pooling_layer=False), rngs=rngs)
        self.classifier = dense_head(config, config.num_labels, rngs)
        self.deterministic = True

    def __call__(
        self, pixel_values: jax.Array, *, rngs: nnx.Rngs | None = None, **options: Any
    ) -> ImageClassifierOutput:
        """pixel_values `[batch, num_channels, height, width]` -> float32 logits
        `[batch, num_labels]`; options as ViTModel's (interpolate_pos_encoding,
        output_hidden_states, output_attentions). rngs: needed in training mode, for dropout."""
        rngs = training_rngs(self, rngs)
        out = self.vit(pixel_values, rngs=rngs, **options)
        logits = self.classifier(out.last_hidden_state[:, 0]).astype(jnp.float32)
        return ImageClassifierOutput(
            logits=logits, hidden_states=out.hidden_states, attentions=out.attentions
        )


def _vit_body(config: ViTConfig, rngs: nnx.Rngs) -> tuple[VisionEmbeddings, Encoder, nnx.Module]:
    """ViT's embeddings, encoder and final layernorm."""
    c = config
    dtypes = dict(dtype=c.dtype, param_dtype=c.param_dtype)
    truncated = nnx.initializers.truncated_normal(c.initializer_range)
    embeddings = VisionEmbeddings(
        c.hidden_size,
        image_size=size_pair(c.image_size, "image_size"),
        patch_size=size_pair(c.patch_size, "patch_size"),
        num_channels=c.num_channels,
        patch_bias=True,
        patch_init=c.initializer_range,
        class_init=truncated,
        position_init=truncated,
        **dtypes,
        rngs=rngs,
    )
    encoder = Encoder.of(
        c,
        c,
        kernel=c.kernel,
        qkv_bias=c.qkv_bias,
        dropout=c.hidden_dropout_prob,
        init=EncoderInit.uniform(c.initializer_range),
        rngs=rngs,
    )
    return embeddings, encoder, layer_norm(c.hidden_size, c.layer_norm_eps, **dtypes, rngs=rngs)


CLASSES = {"ViTForImageClassification": ViTForImageClassification, "ViTModel": ViTModel}


def build(config: ViTConfig, *, rngs: nnx.Rngs) -> ViTForImageClassification | ViTModel:
    """The class that `config.architecture` names (what `from_pretrained` builds)."""
    return CLASSES[config.architecture](config, rngs=rngs)
