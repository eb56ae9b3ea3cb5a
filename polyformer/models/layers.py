"""Small pieces every family's model uses: torch's LayerNorm and the training-mode rngs check."""

from __future__ import annotations

from typing import Any

from flax import nnx

from polyformer.attention.layer import logical


def layer_norm(width: int, epsilon: float, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    """torch.nn.LayerNorm's computation over the last axis `[..., width]`."""
    return nnx.LayerNorm(
        width,
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=param_dtype,
        # E[(x - mean)^2] as torch computes it: E[x^2] - mean^2 loses digits on the residual stream.
        use_fast_variance=False,
        scale_init=logical(nnx.initializers.ones_init(), ("embed",)),
        bias_init=logical(nnx.initializers.zeros_init(), ("embed",)),
        rngs=rngs,
    )


def training_rngs(model: nnx.Module, rngs: nnx.Rngs | None) -> nnx.Rngs | None:
    """The rngs a model's call uses for dropout: None in evaluation mode (`model.deterministic`,
    which model.train() / model.eval() flip); required in training mode."""
    if model.deterministic:
        return None
    if rngs is None:
        raise ValueError("the model is in training mode: pass rngs=nnx.Rngs(dropout=...)")
    return rngs
