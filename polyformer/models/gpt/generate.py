"""Autoregressive generation with the attention layers' decoding caches, compiled once.

The prompt is prefilled in one `model.decode` call; then one token per step inside a
`jax.lax.while_loop` that stops when every row has produced an end-of-sequence token or after
`max_new_tokens`. Semantics follow transformers' `generate`: left padding, position ids
cumsum(attention_mask) - 1, finished rows filled with `pad_token_id`, and the sampling defaults
temperature 1, top_k 50 (0 turns it off), top_p 1.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from polyformer.models.gpt.model import GPT2LMHeadModel


@dataclasses.dataclass(frozen=True)
class _Settings:
    """The static part of one generation: a new value compiles a new loop."""

    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_k: int
    top_p: float
    eos_token_ids: tuple[int, ...]
    pad_token_id: int


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
    """Keeps the k largest logits of each row `[..., vocab]` (ties with the k-th kept too)."""
    kth = jax.lax.top_k(logits, min(k, logits.shape[-1]))[0][..., -1:]
    return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_filter(logits: jax.Array, p: float) -> jax.Array:
    """Keeps the most likely tokens of each row `[..., vocab]` whose probabilities reach p: a
    token stays when the tokens more likely than it hold less than p (the top one always)."""
    descending = jnp.flip(jnp.sort(logits, axis=-1), axis=-1)
    probs = jax.nn.softmax(descending, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    threshold = jnp.min(jnp.where(mass_before < p, descending, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits < threshold, -jnp.inf, logits)


def _next_token(logits: jax.Array, rng: jax.Array, s: _Settings) -> jax.Array:
    """logits `[batch, vocab]` -> token ids `[batch]`, filtered in transformers' order."""
    if not s.do_sample:
        return jnp.argmax(logits, axis=-1)
    logits = logits / s.temperature
    if s.top_k:
        logits = top_k_filter(logits, s.top_k)
    if s.top_p < 1.0:
        logits = top_p_filter(logits, s.top_p)
    return jax.random.categorical(rng, logits, axis=-1)


@functools.partial(jax.jit, static_argnames=("graphdef", "s"))
def _generate(graphdef, state, input_ids, prompt_mask, rng, s: _Settings):
    """Returns tokens `[batch, prompt + max_new_tokens]` and the number of steps that ran."""
    model = nnx.merge(graphdef, state)
    batch, prompt_len = input_ids.shape
    cache = model.init_cache(batch, prompt_len + s.max_new_tokens)
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0)
    logits, cache = model.decode(
        input_ids, cache, position_ids=positions, attention_mask=prompt_mask
    )
    tokens = jnp.full((batch, prompt_len + s.max_new_tokens), s.pad_token_id, input_ids.dtype)
    tokens = tokens.at[:, :prompt_len].set(input_ids)
    eos = jnp.asarray(s.eos_token_ids, input_ids.dtype)

    def running(carry):
        step, _, _, _, finished = carry
        return (step < s.max_new_tokens) & ~jnp.all(finished)

    def step_fn(carry):
        step, tokens, last_logits, cache, finished = carry
        token = _next_token(last_logits, jax.random.fold_in(rng, step), s).astype(tokens.dtype)
        token = jnp.where(finished, s.pad_token_id, token)
        tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, prompt_len + step))
        finished = finished | jnp.isin(token, eos)
        # The last step's decode is not needed; skipping it would cost a second loop body.
        logits, cache = model.decode(
            token[:, None], cache, position_ids=positions[:, -1:] + 1 + step
        )
        return step + 1, tokens, logits[:, -1], cache, finished

    carry = (jnp.int32(0), tokens, logits[:, -1], cache, jnp.zeros((batch,), bool))
    steps, tokens, *_ = jax.lax.while_loop(running, step_fn, carry)
    return tokens, steps


def _as_tuple(ids: int | Sequence[int] | None) -> tuple[int, ...]:
    if ids is None:
        return ()
    return (ids,) if isinstance(ids, int) else tuple(ids)


def generate(
    model: GPT2LMHeadModel,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 50,
    top_p: float = 1.0,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    rng: jax.Array | int | None = None,
) -> jax.Array:
    """Continues each prompt by up to `max_new_tokens` tokens.

    Args:
      input_ids: prompts `[batch, prompt_length]`, left-padded when of different lengths.
      attention_mask: `[batch, prompt_length]`, 0 on the padding (None: no padding).
      do_sample: sample (with temperature, top_k, top_p) instead of taking the argmax.
      eos_token_id: id(s) that end a row (default: the model config's); `[]` never stops early.
      pad_token_id: what finished rows continue with (default: the config's, else the first
        end-of-sequence id).
      rng: a jax key or an int seed; required for sampling.

    Returns `[batch, prompt_length + steps]` int32 token ids (prompts included), steps being the
    number of steps until every row finished, at most max_new_tokens, as transformers returns.
    """
    config = model.config
    input_ids = jnp.asarray(input_ids, jnp.int32)
    prompt_len = input_ids.shape[1]
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    mask = jnp.asarray(attention_mask).astype(bool)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if prompt_len + max_new_tokens > config.n_positions:
        raise ValueError(
            f"prompt ({prompt_len}) + max_new_tokens ({max_new_tokens}) = "
            f"{prompt_len + max_new_tokens} exceeds n_positions={config.n_positions}"
        )
    if not bool(jnp.all(mask[:, -1])):
        raise ValueError("every prompt must end with a real token: pad on the left")
    if not do_sample and (temperature, top_k, top_p) != (1.0, 50, 1.0):
        raise ValueError("temperature, top_k and top_p apply only with do_sample=True")
    if do_sample:
        if rng is None:
            raise ValueError("sampling needs rng= (a jax key or an int seed)")
        if temperature <= 0 or top_k < 0 or not 0 < top_p <= 1:
            raise ValueError(
                f"need temperature > 0, top_k >= 0, 0 < top_p <= 1; got {temperature}, {top_k}, "
                f"{top_p}"
            )
    eos = _as_tuple(config.eos_token_id if eos_token_id is None else eos_token_id)
    if pad_token_id is None:
        pad_token_id = config.pad_token_id if config.pad_token_id is not None else (eos or (0,))[0]
    if rng is None or isinstance(rng, int):
        rng = jax.random.key(rng or 0)  # unused by greedy decoding
    settings = _Settings(
        max_new_tokens, do_sample, float(temperature), top_k, float(top_p), eos, pad_token_id
    )
    graphdef, state = nnx.split(model)
    tokens, steps = _generate(graphdef, state, input_ids, mask, rng, settings)
    return tokens[:, : prompt_len + int(steps)]
