"""transformers' logits processors as pure functions of a fixed-size token buffer.

Inside a compiled loop the tokens so far live in a buffer `[rows, max_length]` of which the first
`cur_len` positions are filled, `cur_len` being traced; each processor reads only those. They run
in transformers' order (`GenerationMixin._get_logits_processor`): repetition penalty, no-repeat
n-grams, bad words, min_new_tokens, then, when sampling, temperature, top-k and top-p.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Processors:
    """The static settings of every processor; their defaults leave the scores untouched.

    Attributes:
      prompt_length: the (padded) prompt length; min_new_tokens counts from there.
      eos_token_ids: what min_new_tokens holds back.
      repetition_penalty: divides the positive scores (multiplies the negative ones) of every
        token already in the row, left padding excluded.
      no_repeat_ngram_size: bans the tokens that would repeat an n-gram of the row (padding
        included, as transformers does); 0 turns it off.
      bad_words_ids: token sequences never completed; a one-token sequence equal to an
        end-of-sequence id is dropped, as transformers drops it.
      min_new_tokens: end-of-sequence ids are banned until this many tokens were generated.
      do_sample: whether the warpers below apply.
      temperature, top_k (0: off), top_p (1: off): the sampling warpers.
      min_tokens_to_keep: what top-k and top-p always keep (beam sampling keeps n_eos + 1).
    """

    prompt_length: int
    eos_token_ids: tuple[int, ...] = ()
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    bad_words_ids: tuple[tuple[int, ...], ...] = ()
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_tokens_to_keep: int = 1


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
    """Keeps the k largest logits of each row `[..., vocab]` (ties with the k-th kept too)."""
    kth = jax.lax.top_k(logits, min(k, logits.shape[-1]))[0][..., -1:]
    return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_filter(logits: jax.Array, p: float, min_keep: int = 1) -> jax.Array:
    """Keeps the most likely tokens of each row `[..., vocab]` whose probabilities reach p: a
    token stays when the tokens more likely than it hold less than p (the top `min_keep` always).
    """
    descending = jnp.flip(jnp.sort(logits, axis=-1), axis=-1)
    probs = jax.nn.softmax(descending, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    kept = (mass_before < p) | (jnp.arange(logits.shape[-1]) < min_keep)
    threshold = jnp.min(jnp.where(kept, descending, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits < threshold, -jnp.inf, logits)


def _mark(ids: jax.Array, keep: jax.Array, vocab_size: int) -> jax.Array:
    """`[rows, vocab]` True at every id of `ids` `[rows, n]` where `keep` holds; the rest go to
    a spare column past the vocabulary, so that they mark nothing."""
    marks = jnp.zeros((ids.shape[0], vocab_size + 1), bool)
    rows = jnp.arange(ids.shape[0])[:, None]
    return marks.at[rows, jnp.where(keep, ids, vocab_size)].set(True)[:, :vocab_size]


def repetition_penalty(
    scores: jax.Array, tokens: jax.Array, cur_len: jax.Array, first_real: jax.Array, penalty: float
) -> jax.Array:
    """scores `[rows, vocab]`; tokens `[rows, max_length]`; first_real `[rows]` the first
    non-padding position, where transformers starts looking (`prompt_ignore_length`)."""
    positions = jnp.arange(tokens.shape[1])
    seen = (positions >= first_real[:, None]) & (positions < cur_len)
    repeated = _mark(tokens, seen, scores.shape[-1])
    penalized = jnp.where(scores < 0, scores * penalty, scores / penalty)
    return jnp.where(repeated, penalized, scores)


def no_repeat_ngram(scores: jax.Array, tokens: jax.Array, cur_len: jax.Array, n: int) -> jax.Array:
    """Bans, in each row, the last token of every n-gram whose first n - 1 tokens equal the
    row's last n - 1 tokens."""
    windows = tokens.shape[1] - n + 1
    grams = jnp.stack([tokens[:, j : j + windows] for j in range(n)], axis=-1)
    suffix = jax.lax.dynamic_slice_in_dim(tokens, cur_len + 1 - n, n - 1, axis=1)
    complete = jnp.arange(windows) + n <= cur_len
    matches = jnp.all(grams[..., :-1] == suffix[:, None], axis=-1) & complete & (cur_len >= n)
    return jnp.where(_mark(grams[..., -1], matches, scores.shape[-1]), -jnp.inf, scores)


def bad_words(
    scores: jax.Array, tokens: jax.Array, cur_len: jax.Array, sequences: tuple[tuple[int, ...], ...]
) -> jax.Array:
    """Bans the last token of each sequence whose other tokens end the row (a one-token
    sequence always)."""
    for sequence in dict.fromkeys(sequences):
        *prefix, last = sequence
        if prefix:
            end = jax.lax.dynamic_slice_in_dim(tokens, cur_len - len(prefix), len(prefix), axis=1)
            hit = jnp.all(end == jnp.asarray(prefix, tokens.dtype), axis=-1) & (
                cur_len >= len(prefix)
            )
        else:
            hit = jnp.ones(scores.shape[:1], bool)
        scores = scores.at[:, last].add(jnp.where(hit, -jnp.inf, 0.0))
    return scores


def process(
    scores: jax.Array,
    tokens: jax.Array,
    cur_len: jax.Array,
    first_real: jax.Array,
    p: Processors,
) -> jax.Array:
    """scores `[rows, vocab]` for the token at position `cur_len` of tokens `[rows, max_length]`
    (first_real `[rows]`: the first non-padding position) -> the processed scores."""
    if p.repetition_penalty != 1.0:
        scores = repetition_penalty(scores, tokens, cur_len, first_real, p.repetition_penalty)
    if p.no_repeat_ngram_size:
        scores = no_repeat_ngram(scores, tokens, cur_len, p.no_repeat_ngram_size)
    banned = tuple(s for s in p.bad_words_ids if not (len(s) == 1 and s[0] in p.eos_token_ids))
    if banned:
        scores = bad_words(scores, tokens, cur_len, banned)
    if p.min_new_tokens and p.eos_token_ids:
        early = cur_len - p.prompt_length < p.min_new_tokens
        eos = jnp.isin(jnp.arange(scores.shape[-1]), jnp.asarray(p.eos_token_ids))
        scores = jnp.where(early & eos, -jnp.inf, scores)
    if p.do_sample:
        if p.temperature != 1.0:
            scores = scores / p.temperature
        if p.top_k:
            scores = top_k_filter(scores, max(p.top_k, p.min_tokens_to_keep))
        if p.top_p < 1.0:
            scores = top_p_filter(scores, p.top_p, p.min_tokens_to_keep)
    return scores
