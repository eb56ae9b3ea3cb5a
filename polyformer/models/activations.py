"""Activation functions under the names Hugging Face configs use (`activation_function`,
`hidden_act`), one explicit dict shared by every model family."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp


def gelu_fast(x: jax.Array) -> jax.Array:
    """HF's FastGELU: the tanh approximation with its constants rounded as HF rounds them."""
    return 0.5 * x * (1.0 + jnp.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def quick_gelu(x: jax.Array) -> jax.Array:
    """x * sigmoid(1.702 x), the GELU approximation of the original CLIP."""
    return x * jax.nn.sigmoid(1.702 * x)


def linear(x: jax.Array) -> jax.Array:
    return x


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    # OpenAI's GPT-2 GELU and PyTorch's tanh GELU are both the tanh approximation jax computes.
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_fast": gelu_fast,
    "quick_gelu": quick_gelu,
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "linear": linear,
}


def check_activation(name: str) -> None:
    """Raises ValueError for a name not in ACTIVATIONS, listing the known ones."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation function {name!r}; known: {', '.join(ACTIVATIONS)}")
