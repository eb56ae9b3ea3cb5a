"""Random-weight transformers ViT models, the reference of the parity tests here."""

import functools

import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

TINY = dict(
    hidden_size=36, num_hidden_layers=2, num_attention_heads=3, intermediate_size=50,
    image_size=20, patch_size=4, num_labels=5,
)  # fmt: skip

# google/vit-base-patch16-224's config.json, less its 1000 ImageNet label names.
OFFICIAL = dict(
    architectures=["ViTForImageClassification"], attention_probs_dropout_prob=0.0,
    hidden_act="gelu", hidden_dropout_prob=0.0, hidden_size=768, image_size=224,
    initializer_range=0.02, intermediate_size=3072, layer_norm_eps=1e-12, model_type="vit",
    num_attention_heads=12, num_channels=3, num_hidden_layers=12, patch_size=16, qkv_bias=True,
    num_labels=1000,
)  # fmt: skip


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Adds noise to every parameter, in place, and returns the model in eval mode: transformers
    initialises LayerNorms and biases to constants, which would hide a swapped or dropped
    tensor."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def random_hf_model(cls=transformers.ViTForImageClassification, **config) -> torch.nn.Module:
    """transformers' `cls` at the TINY sizes unless overridden, every parameter random."""
    torch.manual_seed(0)
    return randomise(cls(transformers.ViTConfig(**{**TINY, **config})))


def pixels(batch: int, height: int, width: int | None = None, seed: int = 0) -> np.ndarray:
    """float32 `[batch, 3, height, width]` in the normalised range a processor produces."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (batch, 3, height, width or height)).astype(np.float32)


def hf_outputs(model, pixel_values: np.ndarray, **kwargs):
    with torch.no_grad():
        return model(torch.as_tensor(pixel_values), **kwargs)


def random_model(cls, config, seed: int = 0):
    """Our `cls(config)` with random parameters drawn by numpy: LayerNorm scales 1 + N(0, 0.1),
    everything else N(0, 0.05). Building through nnx.eval_shape skips jax's initialisers, which
    compile once per parameter shape and dominate a small test's time."""
    abstract = nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    rng = np.random.default_rng(seed)
    flat = dict(nnx.to_flat_state(params))
    for path, var in flat.items():
        shape, dtype = var.get_value().shape, var.get_value().dtype
        base = 1.0 if path[-1] == "scale" else 0.0
        std = 0.1 if path[-1] == "scale" else 0.05
        var.set_value(jnp.asarray(base + std * rng.standard_normal(shape), dtype))
    return nnx.merge(graphdef, nnx.from_flat_state(flat), rest)


@functools.partial(nnx.jit, static_argnames=("interpolate", "hidden"))
def forward(model, pixel_values, interpolate=False, hidden=False, rngs=None):
    return model(
        pixel_values, interpolate_pos_encoding=interpolate, output_hidden_states=hidden, rngs=rngs
    )


def close(got, want):
    np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=1e-4, rtol=0)
