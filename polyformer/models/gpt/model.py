"""GPT-2 as flax.nnx modules, named like transformers' GPT2LMHeadModel so that the conversion
table reads like its state dict: wte, wpe, h[i].{ln_1, attn, ln_2, mlp.c_fc, mlp.c_proj}, ln_f,
lm_head (absent when the output embedding is tied to wte)."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from polyformer.attention import MultiHeadAttention
from polyformer.attention.layer import linear, logical
from polyformer.attention.layout import constrain
from polyformer.models import layers
from polyformer.models.activations import ACTIVATIONS
from polyformer.models.gpt.config import GPT2Config
from polyformer.models.inputs import check_ids


@flax.struct.dataclass
class CausalLMOutput:
    """logits `[batch, length, vocab_size]` (float32; None with output_logits=False);
    hidden_states, when asked for: n_layer + 1 arrays `[batch, length, n_embd]`, the embeddings
    then each block's output, the last one after ln_f (as transformers reports them);
    attentions, when asked for: n_layer arrays `[batch, n_head, length, length]` (float32), each
    block's attention probabilities."""

    logits: jax.Array | None
    hidden_states: tuple[jax.Array, ...] | None = None
    attentions: tuple[jax.Array, ...] | None = None


@flax.struct.dataclass
class StackedCache:
    """The decoding caches of scanned layers (scan_layers): `layers` is one layer's cache with
    every array stacked on a leading layer axis, so that its batch axis is the second."""

    layers: Any


def projection_std(config: GPT2Config) -> float:
    """GPT-2's init of the projections into the residual stream: initializer_range scaled by
    1/sqrt(the number of residual additions)."""
    return config.initializer_range / (2 * config.n_layer) ** 0.5


class GPT2MLP(nnx.Module):
    """c_fc -> activation -> c_proj -> dropout, on x `[batch, length, n_embd]`."""

    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs):
        c = config
        dtypes = dict(dtype=c.dtype, param_dtype=c.param_dtype, rngs=rngs)
        self.c_fc = linear(
            c.n_embd,
            c.inner_dim,
            ("embed", "mlp"),
            kernel_init=nnx.initializers.normal(c.initializer_range),
            **dtypes,
        )
        self.c_proj = linear(
            c.inner_dim,
            c.n_embd,
            ("mlp", "embed"),
            kernel_init=nnx.initializers.normal(projection_std(c)),
            **dtypes,
        )
        self.act = ACTIVATIONS[c.activation_function]
        self.dropout = nnx.Dropout(c.resid_pdrop)

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
        hidden = constrain(self.act(self.c_fc(x)), layers.MLP_HIDDEN)
        x = checkpoint_name(self.c_proj(hidden), layers.MLP_OUTPUT)
        return self.dropout(x, deterministic=rngs is None, rngs=rngs)


class GPT2Block(nnx.Module):
    """Pre-norm block: x + attn(ln_1(x)), then x + mlp(ln_2(x)); x `[batch, length, n_embd]`.

    Dropout runs when the call gets `rngs` (the model passes them in training mode only). Each
    call gets the block's layer index, on which the factor on q.k may depend
    (`GPT2Config.attention_scale`): a Python int, or a traced one in scanned layers.
    """

    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs):
        c = config
        dtypes = dict(dtype=c.dtype, param_dtype=c.param_dtype)
        self.ln_1 = layers.layer_norm(c.n_embd, c.layer_norm_epsilon, **dtypes, rngs=rngs)
        self.attn = MultiHeadAttention(
            c.n_head,
            c.n_embd,
            kernel=c.kernel,
            kernel_init=nnx.initializers.normal(c.initializer_range),
            out_kernel_init=nnx.initializers.normal(projection_std(c)),
            **dtypes,
            rngs=rngs,
        )
        self.attn_dropout = nnx.Dropout(c.resid_pdrop)  # HF's attn.resid_dropout
        self.ln_2 = layers.layer_norm(c.n_embd, c.layer_norm_epsilon, **dtypes, rngs=rngs)
        self.mlp = GPT2MLP(c, rngs=rngs)
        self.attention_scale = c.attention_scale
        self.by_layer = c.scale_attn_by_inverse_layer_idx

    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None,
        rngs: nnx.Rngs | None,
        segment_ids: jax.Array | None,
        layer: int | jax.Array,
        *,
        output_attentions: bool = False,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """mask `[batch, length]` True for real tokens (None: all real); segment_ids `[batch,
        length]`: a token attends only to tokens of its own segment (None: one segment); layer:
        the block's index in the stack. Returns
        the block's output, with its attention probabilities `[batch, n_head, length, length]`
        when output_attentions."""
        rng = None if rngs is None else rngs.dropout()
        h, probs = layers.attend(
            self.attn,
            self.ln_1(x),
            mask=mask,
            causal=True,
            **self._scale(layer),
            rng=rng,
            segment_ids=segment_ids,
            output_attentions=output_attentions,
        )
        x = x + self.attn_dropout(h, deterministic=rngs is None, rngs=rngs)
        return layers.layer_output(x + self.mlp(self.ln_2(x), rngs), probs)

    def _scale(self, layer: int | jax.Array) -> dict[str, Any]:
        """The attention's arguments for layer `layer`'s factor on q.k: the kernel's static
        `scale` for a Python int; for a traced index, whose 1 / (layer + 1) the kernel cannot take
        (it compiles its scale in), that factor as `query_scale` on q instead."""
        if isinstance(layer, int) or not self.by_layer:
            return {"scale": self.attention_scale(layer if isinstance(layer, int) else 0)}
        return {"scale": self.attention_scale(0), "query_scale": 1.0 / (layer + 1.0)}

    def decode(
        self, x: jax.Array, cache, mask: jax.Array | None, layer: int | jax.Array
    ) -> tuple[jax.Array, Any]:
        """n new positions x `[batch, n, n_embd]` against the layer's cache; no dropout."""
        h, cache = self.attn.decode(self.ln_1(x), cache, mask=mask, **self._scale(layer))
        x = x + h
        return x + self.mlp(self.ln_2(x), None), cache


class GPT2LMHeadModel(nnx.Module):
    """GPT-2 with its language-modelling head.

    Built in evaluation mode, as transformers' from_pretrained returns models; `model.train()`
    turns dropout on, and then every call needs `rngs=nnx.Rngs(dropout=...)`.
    """

    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs):
        c = config
        self.config = config
        dtypes = dict(dtype=c.dtype, param_dtype=c.param_dtype)
        self.wte = nnx.Embed(
            c.vocab_size,
            c.n_embd,
            embedding_init=logical(
                nnx.initializers.normal(c.initializer_range), ("vocab", "embed")
            ),
            **dtypes,
            rngs=rngs,
        )
        self.wpe = nnx.Embed(
            c.n_positions,
            c.n_embd,
            embedding_init=logical(nnx.initializers.normal(c.initializer_range), (None, "embed")),
            **dtypes,
            rngs=rngs,
        )
        self.drop = nnx.Dropout(c.embd_pdrop)
        self.h = layers.layer_stack(
            lambda rngs: GPT2Block(c, rngs=rngs), c.n_layer, scan=c.scan_layers, rngs=rngs
        )
        self.ln_f = layers.layer_norm(c.n_embd, c.layer_norm_epsilon, **dtypes, rngs=rngs)
        if not c.tie_word_embeddings:
            self.lm_head = nnx.Linear(
                c.n_embd,
                c.vocab_size,
                use_bias=False,
                kernel_init=logical(
                    nnx.initializers.normal(c.initializer_range), ("embed", "vocab")
                ),
                **dtypes,
                rngs=rngs,
            )
        self.deterministic = True  # flipped by model.train() / model.eval()

    def output_kernel(self) -> jax.Array:
        """The output head's kernel `[n_embd, vocab_size]`: wte's transpose when tied. The logits
        are the last hidden state (after ln_f) times this, as `gpt.loss.chunked_lm_loss` takes
        them."""
        if self.config.tie_word_embeddings:
            return self.wte.embedding[...].T
        return self.lm_head.kernel[...]

    def _logits(self, x: jax.Array) -> jax.Array:
        """`[batch, length, n_embd]` -> float32 `[batch, length, vocab_size]`."""
        kernel = self.output_kernel().astype(x.dtype)
        return jnp.dot(x, kernel, preferred_element_type=jnp.float32)

    def _check_length(self, length: int) -> None:
        if length > self.config.n_positions:
            raise ValueError(
                f"{length} positions do not fit: this model has n_positions="
                f"{self.config.n_positions} position embeddings"
            )

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        *,
        segment_ids: jax.Array | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        output_logits: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> CausalLMOutput:
        """input_ids `[batch, length]`; attention_mask `[batch, length]`, 1 for real tokens and 0
        for padding (None: no padding); position_ids `[batch | 1, length]` (None: 0..length-1, as
        in transformers; left-padded batches that want HF's generation positions pass
        cumsum(attention_mask) - 1); segment_ids `[batch, length]` int packs several documents
        in a row: a token attends only to its own document's (give each document's positions in
        position_ids). rngs: needed in training mode, for dropout.
        output_hidden_states, output_attentions: return the hidden states and the attention
        probabilities (see CausalLMOutput). output_logits=False leaves logits None: a loss over
        the vocabulary in chunks (gpt.loss.chunked_lm_loss) takes the last hidden state instead."""
        if input_ids.ndim != 2 or input_ids.shape[1] == 0:
            raise ValueError(
                f"input_ids must be [batch, length] with length >= 1, got shape "
                f"{tuple(input_ids.shape)}"
            )
        self._check_length(input_ids.shape[1])
        check_ids(input_ids, self.config.vocab_size, "input_ids")
        rngs = layers.training_rngs(self, rngs)
        if position_ids is None:
            position_ids = jnp.arange(input_ids.shape[1])[None]
        mask = None if attention_mask is None else attention_mask.astype(bool)
        x = self.wte(input_ids) + self.wpe(position_ids)
        x = self.drop(x, deterministic=rngs is None, rngs=rngs)
        x, hidden, attentions = layers.run_layers(
            self.h,
            x,
            self.config.remat,
            mask,
            rngs,
            segment_ids,
            per_layer=(range(self.config.n_layer),),
            output_attentions=output_attentions,
        )
        x = self.ln_f(x)
        return CausalLMOutput(
            logits=self._logits(x) if output_logits else None,
            hidden_states=(*hidden[:-1], x) if output_hidden_states else None,
            attentions=attentions,
        )

    def init_cache(self, batch: int, max_length: int) -> tuple[Any, ...] | StackedCache:
        """The decoding caches for up to `max_length` positions (the kernel's kind): one per
        layer, or with scan_layers one StackedCache of them all."""
        self._check_length(max_length)
        if isinstance(self.h, layers.LayerStack):
            cache = self.h.layer.attn.init_cache(batch, max_length)
            n = self.config.n_layer
            return StackedCache(jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), cache))
        return tuple(block.attn.init_cache(batch, max_length) for block in self.h)

    def decode(
        self,
        input_ids: jax.Array,
        cache: tuple[Any, ...] | StackedCache,
        *,
        position_ids: jax.Array,
        attention_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, tuple[Any, ...] | StackedCache]:
        """Runs n new tokens input_ids `[batch, n]` (positions `[batch, n]`, attention_mask
        `[batch, n]` 0 for padding) against everything already in `cache`; returns float32
        logits `[batch, n, vocab_size]` and the updated cache. Inference only: no dropout."""
        check_ids(input_ids, self.config.vocab_size, "input_ids")
        mask = None if attention_mask is None else attention_mask.astype(bool)
        x = self.wte(input_ids) + self.wpe(position_ids)
        if isinstance(self.h, layers.LayerStack):
            x, layers_cache = layers.scan_layers(
                self.h,
                lambda block, x, inputs: block.decode(x, inputs[0], mask, inputs[1]),
                x,
                (cache.layers, jnp.arange(self.config.n_layer)),
            )
            return self._logits(self.ln_f(x)), StackedCache(layers_cache)
        new_cache = []
        for i, (block, layer_cache) in enumerate(zip(self.h, cache, strict=True)):
            x, layer_cache = block.decode(x, layer_cache, mask, i)
            new_cache.append(layer_cache)
        return self._logits(self.ln_f(x)), tuple(new_cache)
