"""Beam search as transformers 5 runs it (`GenerationMixin._beam_search`), in one while_loop.

Each step scores every (beam, token) continuation by its accumulated log-probability, keeps the
best (n_eos + 1) * num_beams candidates (or samples them without replacement), continues the best
num_beams that did not just end, and merges the ones that ended, length-penalised, into the
num_beams best finished hypotheses. The beams live in the rows of the model's decoding cache,
which is reordered by a gather along its batch axis after every step: shapes never change, so
the loop compiles once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from polyformer.models.gpt import logits_process
from polyformer.models.gpt.logits_process import Processors
from polyformer.models.gpt.model import StackedCache

# transformers' stand-in for minus infinity in beam scores; kept so that ties break as there.
_NEG = -1.0e9

Step = Callable[[jax.Array, Any, jax.Array], tuple[jax.Array, Any]]
"""(tokens `[batch * num_beams]`, cache, step) -> (logits `[batch * num_beams, vocab]`, cache)."""


@dataclasses.dataclass(frozen=True)
class BeamSettings:
    """The static part of a beam search.

    Attributes:
      num_beams, length_penalty, num_return_sequences: as in transformers.
      early_stopping: True (stop a prompt once num_beams hypotheses finished), False (stop when
        the best running beam, at its current length, cannot beat the worst finished one) or
        "never" (the same bound taken at max_length when length_penalty > 0).
      max_length: prompt length + max_new_tokens.
      fill: what follows the end of a hypothesis shorter than the longest returned.
    """

    num_beams: int
    length_penalty: float
    early_stopping: bool | str
    num_return_sequences: int
    max_length: int
    fill: int
    processors: Processors


def _gather(x: jax.Array, index: jax.Array) -> jax.Array:
    """x `[batch, beams, ...]`, index `[batch, k]` -> `[batch, k, ...]`."""
    index = index.reshape(index.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, index, axis=1)


def reorder_cache(cache: Any, rows: jax.Array) -> Any:
    """Every cache array with a batch axis gathered at `rows` `[batch * num_beams]` (the
    scalar write indices are shared by all rows); a StackedCache's batch axis is its second."""
    if isinstance(cache, StackedCache):
        return StackedCache(jax.tree.map(lambda x: x[:, rows] if x.ndim > 1 else x, cache.layers))
    return jax.tree.map(lambda x: x[rows] if x.ndim else x, cache)


def _choose(acc: jax.Array, k: int, rng: jax.Array, do_sample: bool) -> tuple[jax.Array, ...]:
    """The k best (or k sampled without replacement, best first) of acc `[batch, beams * vocab]`:
    (scores, indices), each `[batch, k]`."""
    if not do_sample:
        return jax.lax.top_k(acc, k)
    # Gumbel top-k draws k without replacement from softmax(acc), as torch.multinomial does.
    _, index = jax.lax.top_k(acc + jax.random.gumbel(rng, acc.shape), k)
    picked = jnp.take_along_axis(acc, index, axis=1)
    order = jnp.argsort(-picked, axis=1, stable=True)
    return jnp.take_along_axis(picked, order, 1), jnp.take_along_axis(index, order, 1)


def beam_search(
    logits: jax.Array,
    cache: Any,
    input_ids: jax.Array,
    first_real: jax.Array,
    step_fn: Step,
    rng: jax.Array,
    s: BeamSettings,
) -> tuple[jax.Array, jax.Array]:
    """Runs the search from the prefilled state.

    Args:
      logits: `[batch * num_beams, vocab]` the prompts' next-token logits, each prompt repeated
        num_beams times (rows b * num_beams + j).
      cache: the decoding cache after the prompts, rows as logits.
      input_ids: the prompts `[batch * num_beams, prompt_length]`.
      first_real: `[batch * num_beams]` each row's first non-padding position.

    Returns (sequences `[batch * num_return_sequences, max_length]`, length): the best
    hypotheses per prompt, best first; only the first `length` positions are meaningful.
    """
    k, p = s.num_beams, s.processors
    rows, prompt_len = input_ids.shape
    batch, vocab = rows // k, logits.shape[-1]
    n_eos = len(p.eos_token_ids)
    keep = max(2, 1 + n_eos) * k
    eos = jnp.asarray(p.eos_token_ids, input_ids.dtype)
    in_top_beams = jnp.arange(keep) < k
    offsets = (jnp.arange(batch) * k)[:, None]

    running = jnp.full((batch, k, s.max_length), s.fill, input_ids.dtype)
    running = running.at[:, :, :prompt_len].set(input_ids.reshape(batch, k, prompt_len))
    state = dict(
        step=jnp.int32(0),
        running=running,
        running_scores=jnp.zeros((batch, k)).at[:, 1:].set(_NEG),
        sequences=running,
        scores=jnp.full((batch, k), _NEG),
        finished=jnp.zeros((batch, k), bool),
        lengths=jnp.zeros((batch, k), jnp.int32),
        improvable=jnp.ones((batch, 1), bool),
        done=jnp.asarray(False),
        logits=logits,
        cache=cache,
    )

    def body(c: dict) -> dict:
        step = c["step"]
        cur_len = prompt_len + step
        flat_running = c["running"].reshape(rows, s.max_length)
        log_probs = jax.nn.log_softmax(c["logits"], axis=-1)
        log_probs = logits_process.process(log_probs, flat_running, cur_len, first_real, p)
        acc = log_probs.reshape(batch, k, vocab) + c["running_scores"][..., None]
        top_scores, top_index = _choose(
            acc.reshape(batch, k * vocab), keep, jax.random.fold_in(rng, step), p.do_sample
        )
        parents, tokens = top_index // vocab, (top_index % vocab).astype(input_ids.dtype)
        candidates = _gather(c["running"], parents).at[:, :, cur_len].set(tokens)
        ends = jnp.isin(tokens, eos) | (cur_len + 1 >= s.max_length)

        # The best candidates that did not end continue.
        open_scores = top_scores + ends * _NEG
        best_open = jax.lax.top_k(open_scores, k)[1]
        running = _gather(candidates, best_open)
        running_scores = _gather(open_scores, best_open)
        beam_rows = (_gather(parents, best_open) + offsets).reshape(rows)

        # The top num_beams candidates that ended join the finished hypotheses if good enough.
        just_ended = ends & in_top_beams
        ended_scores = top_scores / (cur_len + 1 - prompt_len) ** s.length_penalty
        full = jnp.all(c["finished"], axis=-1, keepdims=True) & (s.early_stopping is True)
        ended_scores = ended_scores + full * _NEG + ~c["improvable"] * _NEG + ~just_ended * _NEG
        merged_scores = jnp.concatenate([c["scores"], ended_scores], axis=1)
        best = jax.lax.top_k(merged_scores, k)[1]
        merged_lengths = jnp.broadcast_to(step + 1, (batch, keep))

        def merge(old, new):
            return _gather(jnp.concatenate([old, new], axis=1), best)

        sequences = merge(c["sequences"], candidates)
        finished = merge(c["finished"], just_ended)
        scores = _gather(merged_scores, best)
        lengths = merge(c["lengths"], merged_lengths)

        if s.early_stopping == "never" and s.length_penalty > 0.0:
            best_length = s.max_length - prompt_len
        else:
            best_length = cur_len + 1 - prompt_len
        best_possible = running_scores[:, :1] / best_length**s.length_penalty
        worst = jnp.where(finished, jnp.min(scores, axis=1, keepdims=True), _NEG)
        improvable = c["improvable"] & jnp.any(best_possible > worst, axis=-1, keepdims=True)
        open_beams = ~(jnp.all(finished) & (s.early_stopping is True))
        done = ~(jnp.any(improvable) & open_beams & ~jnp.all(ends))

        # The last step's decode is not needed; skipping it would cost a second loop body.
        cache = reorder_cache(c["cache"], beam_rows)
        logits, cache = step_fn(running[:, :, cur_len].reshape(rows), cache, step)
        return dict(
            step=step + 1,
            running=running,
            running_scores=running_scores,
            sequences=sequences,
            scores=scores,
            finished=finished,
            lengths=lengths,
            improvable=improvable,
            done=done,
            logits=logits,
            cache=cache,
        )

    state = jax.lax.while_loop(lambda c: ~c["done"], body, state)
    n = s.num_return_sequences
    sequences = state["sequences"][:, :n].reshape(batch * n, s.max_length)
    return sequences, prompt_len + jnp.max(state["lengths"][:, :n])
