"""The multi-head attention layer: projections and heads around any kernel."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from polyformer.attention.base import AttentionKernel
from polyformer.attention.dense import Dense
from polyformer.attention.layout import constrain

LECUN_NORMAL = nnx.initializers.lecun_normal()
HEADS = ("batch", "length", "heads", None)  # q, k, v and the kernel's output


def logical(initializer, axes: tuple[str, ...]):
    """Names the logical axes of a parameter; the training package maps them onto a device mesh
    with its rules table. Nothing is sharded at creation, so models build without a mesh."""
    return nnx.with_partitioning(initializer, axes, eager_sharding=False)


def linear(
    in_features: int,
    out_features: int,
    axes: tuple[str, str],
    *,
    kernel_init: nnx.Initializer,
    dtype: Any,
    param_dtype: Any,
    rngs: nnx.Rngs,
    use_bias: bool = True,
) -> nnx.Linear:
    """An nnx.Linear whose weight `[in, out]` and bias `[out]` carry the logical axes `axes`."""
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=logical(kernel_init, axes),
        bias_init=logical(nnx.initializers.zeros_init(), (axes[1],)),
        rngs=rngs,
    )


class MultiHeadAttention(nnx.Module):
    """query/key/value projections, a kernel, an output projection.

    The parameter tree is the same for every kernel, so one checkpoint runs under Dense, Sparse or
    Favor; swap `layer.kernel` to change the attention of one layer. Kernels are frozen values
    and hold no parameters.

    Args:
      num_heads: number of query heads.
      in_features: width of the input x `[batch, length, in_features]`.
      head_dim: width of each head (default in_features // num_heads).
      num_kv_heads: number of key/value heads, a divisor of num_heads (default num_heads):
        grouped-query attention, or multi-query with 1. The key and value projections shrink to
        num_kv_heads * head_dim outputs; with the default the parameter tree is unchanged.
      out_features: width of the output (default in_features).
      kernel: any kernel of the attention package (default Dense()).
      use_bias: biases on the four projections; qkv_bias: on query, key and value only
        (default use_bias), as ViT's `qkv_bias=False` keeps the output projection's bias.
      kernel_init: initializer of the query/key/value weights (default lecun_normal);
        out_kernel_init: of the output projection's (default kernel_init).
      dtype: computation dtype (None: the input's); param_dtype: storage dtype.
    """

    def __init__(
        self,
        num_heads: int,
        in_features: int,
        *,
        head_dim: int | None = None,
        num_kv_heads: int | None = None,
        out_features: int | None = None,
        kernel: AttentionKernel | None = None,
        use_bias: bool = True,
        qkv_bias: bool | None = None,
        kernel_init: nnx.Initializer = LECUN_NORMAL,
        out_kernel_init: nnx.Initializer | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if head_dim is None:
            if in_features % num_heads:
                raise ValueError(
                    f"in_features={in_features} is not divisible by num_heads={num_heads}; "
                    "pass head_dim explicitly"
                )
            head_dim = in_features // num_heads
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_kv_heads < 1 or num_heads % num_kv_heads:
            raise ValueError(
                f"num_kv_heads={num_kv_heads} must be a positive divisor of num_heads={num_heads}"
            )
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.kernel = Dense() if kernel is None else kernel
        self.dtype = dtype
        inner = num_heads * head_dim
        opts = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        qkv_bias = use_bias if qkv_bias is None else qkv_bias
        qkv = dict(opts, kernel_init=kernel_init, use_bias=qkv_bias)
        self.query = linear(in_features, inner, ("embed", "heads"), **qkv)
        kv_inner = num_kv_heads * head_dim
        self.key = linear(in_features, kv_inner, ("embed", "heads"), **qkv)
        self.value = linear(in_features, kv_inner, ("embed", "heads"), **qkv)
        self.out = linear(
            inner,
            out_features or in_features,
            ("heads", "embed"),
            kernel_init=out_kernel_init or kernel_init,
            **opts,
        )

    def _split(self, x: jax.Array) -> jax.Array:
        return x.reshape(*x.shape[:-1], -1, self.head_dim)

    def _query(self, x: jax.Array, scale: jax.Array | None) -> jax.Array:
        q = self._split(self.query(x))
        return q if scale is None else q * scale.astype(q.dtype)

    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        *,
        mask: jax.Array | None = None,
        causal: bool = False,
        bias: jax.Array | None = None,
        scale: float | None = None,
        rng: jax.Array | None = None,
        segment_ids: jax.Array | tuple[jax.Array, jax.Array] | None = None,
        output_attentions: bool = False,
        query_scale: jax.Array | None = None,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """x `[batch, q_length, in_features]`, context `[batch, k_length, in_features]` (default
        x) -> `[batch, q_length, out_features]`. mask, causal, bias, scale, rng, segment_ids: as
        the kernel (base.py). With output_attentions (a Python bool), returns (that output, the
        kernel's probabilities `[batch, heads, q_length, k_length]` in float32, before dropout).
        query_scale: a scalar array multiplying q before the kernel, for a factor on q.k that is
        traced (a scanned layer's), which the kernel's static `scale` cannot be."""
        context = x if context is None else context
        q = self._query(x, query_scale)
        k = self._split(self.key(context))
        v = self._split(self.value(context))
        q, k, v = (constrain(t, HEADS) for t in (q, k, v))
        masking = dict(bias=bias, scale=scale, segment_ids=segment_ids)
        out = constrain(self.kernel(q, k, v, mask, causal, rng=rng, **masking), HEADS)
        out = self.out(out.reshape(*out.shape[:2], -1))
        if not output_attentions:
            return out
        if not hasattr(self.kernel, "probabilities"):
            raise ValueError(
                f"{type(self.kernel).__name__} has no `probabilities` method, which "
                "output_attentions needs (see polyformer.attention.base)"
            )
        return out, self.kernel.probabilities(q, k, mask, causal, **masking)

    def init_cache(self, batch: int, max_length: int, dtype: Any = None):
        """The kernel's decoding cache for up to `max_length` positions."""
        if not hasattr(self.kernel, "decode"):
            raise ValueError(f"{type(self.kernel).__name__} has no causal decoding cache")
        dtype = dtype or self.dtype or jnp.float32
        return self.kernel.init_cache(batch, max_length, self.num_kv_heads, self.head_dim, dtype)

    def decode(
        self,
        x: jax.Array,
        cache,
        *,
        mask: jax.Array | None = None,
        scale: float | None = None,
        segment_ids: jax.Array | None = None,
        query_scale: jax.Array | None = None,
    ):
        """Causal self-attention of n new positions x `[batch, n, in_features]` over everything
        in `cache` plus themselves; mask `[batch, n]` marks real tokens, segment_ids `[batch, n]`
        their packed sequence; query_scale as in a call. Returns (out, cache).

        Decoding a sequence piece by piece gives the outputs of one causal pass over all of it.
        """
        q = self._query(x, query_scale)
        k, v = (self._split(proj(x)) for proj in (self.key, self.value))
        out, cache = self.kernel.decode(cache, q, k, v, mask, scale=scale, segment_ids=segment_ids)
        return self.out(out.reshape(*out.shape[:2], -1)), cache
