"""Autoregressive generation with the attention layers' decoding caches, compiled once.

The prompt is prefilled in one `model.decode` call; then one token per step inside a
`jax.lax.while_loop` that stops when every row has produced an end-of-sequence token or after
`max_new_tokens`. Semantics follow transformers' `generate`: left padding, position ids
cumsum(attention_mask) - 1, finished rows filled with `pad_token_id`, its logits processors in
its order (logits_process.py), the sampling defaults temperature 1, top_k 50 (0 turns it off),
top_p 1, and its beam search (beam_search.py).

Streaming: the loop hands each step's tokens to the host through an ordered
`jax.experimental.io_callback`, so streamed and plain generation run the same single compiled
loop (a host loop over a jitted step would pay a dispatch and a device-to-host wait per token
even when nobody streams). The callback carries an integer handle instead of the streamer, so
that a new streamer does not compile a new loop.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import math
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import io_callback

from polyformer.models.gpt import beam_search as beams
from polyformer.models.gpt.logits_process import Processors, process
from polyformer.models.gpt.model import GPT2LMHeadModel
from polyformer.models.inputs import check_ids


class Streamer(Protocol):
    """What `generate(streamer=...)` feeds, as transformers' streamers (`TextStreamer`,
    `TextIteratorStreamer` work as they are): `put` gets the prompts `[batch, prompt_length]`,
    then each step's tokens `[batch]` as numpy int32 arrays; `end` comes after the last step."""

    def put(self, value: np.ndarray) -> None: ...

    def end(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class _Settings:
    """The static part of one greedy or sampling generation: a new value compiles a new loop."""

    max_new_tokens: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    processors: Processors
    stream: bool


_streamers: dict[int, Streamer] = {}  # the live streams, by the handle their loop carries
_handles = itertools.count()


def _emit(handle: np.ndarray, tokens: np.ndarray) -> None:
    _streamers[int(handle)].put(np.asarray(tokens))


def _prefill(model: GPT2LMHeadModel, input_ids: jax.Array, prompt_mask: jax.Array, length: int):
    """Runs the prompts `[rows, prompt_length]` through a cache for `length` positions: the
    last logits `[rows, vocab]`, the cache, and a step function for the next tokens."""
    cache = model.init_cache(input_ids.shape[0], length)
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0)
    logits, cache = model.decode(
        input_ids, cache, position_ids=positions, attention_mask=prompt_mask
    )

    def step_fn(tokens: jax.Array, cache: Any, step: jax.Array) -> tuple[jax.Array, Any]:
        logits, cache = model.decode(
            tokens[:, None], cache, position_ids=positions[:, -1:] + 1 + step
        )
        return logits[:, -1], cache

    return logits[:, -1], cache, step_fn


def _first_real(prompt_mask: jax.Array) -> jax.Array:
    """Each row's first non-padding position `[rows]` of a left-padded mask `[rows, length]`."""
    return jnp.argmax(prompt_mask, axis=1)


@functools.partial(jax.jit, static_argnames=("graphdef", "s"))
def _generate(graphdef, state, input_ids, prompt_mask, rng, handle, s: _Settings):
    """Returns tokens `[batch, prompt + max_new_tokens]` and how many of them are meaningful
    (the prompt and the steps that ran)."""
    model = nnx.merge(graphdef, state)
    batch, prompt_len = input_ids.shape
    logits, cache, step_fn = _prefill(model, input_ids, prompt_mask, prompt_len + s.max_new_tokens)
    tokens = jnp.full((batch, prompt_len + s.max_new_tokens), s.pad_token_id, input_ids.dtype)
    tokens = tokens.at[:, :prompt_len].set(input_ids)
    eos = jnp.asarray(s.eos_token_ids, input_ids.dtype)
    first_real = _first_real(prompt_mask)

    def running(carry):
        step, _, _, _, finished = carry
        return (step < s.max_new_tokens) & ~jnp.all(finished)

    def body(carry):
        step, tokens, last_logits, cache, finished = carry
        scores = process(last_logits, tokens, prompt_len + step, first_real, s.processors)
        if s.processors.do_sample:
            token = jax.random.categorical(jax.random.fold_in(rng, step), scores, axis=-1)
        else:
            token = jnp.argmax(scores, axis=-1)
        token = jnp.where(finished, s.pad_token_id, token.astype(tokens.dtype))
        if s.stream:
            io_callback(_emit, None, handle, token, ordered=True)
        tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, prompt_len + step))
        finished = finished | jnp.isin(token, eos)
        # The last step's decode is not needed; skipping it would cost a second loop body.
        logits, cache = step_fn(token, cache, step)
        return step + 1, tokens, logits, cache, finished

    carry = (jnp.int32(0), tokens, logits, cache, jnp.zeros((batch,), bool))
    steps, tokens, *_ = jax.lax.while_loop(running, body, carry)
    return tokens, prompt_len + steps


@functools.partial(jax.jit, static_argnames=("graphdef", "s"))
def _beam_search(graphdef, state, input_ids, prompt_mask, rng, s: beams.BeamSettings):
    """Returns sequences `[batch * num_return_sequences, max_length]` and their length."""
    model = nnx.merge(graphdef, state)
    logits, cache, step_fn = _prefill(model, input_ids, prompt_mask, s.max_length)
    first_real = _first_real(prompt_mask)
    return beams.beam_search(logits, cache, input_ids, first_real, step_fn, rng, s)


def _as_tuple(ids: int | Sequence[int] | None) -> tuple[int, ...]:
    if ids is None:
        return ()
    return (ids,) if isinstance(ids, int) else tuple(ids)


def _positive_float(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite positive number, got {value}")
    return float(value)


def _count(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _bad_words(bad_words_ids: Sequence[Sequence[int]] | None, vocab_size: int):
    if bad_words_ids is None:
        return ()
    words = tuple(tuple(word) for word in bad_words_ids)
    if not words or any(
        not word
        or any(not isinstance(t, int | np.integer) or not 0 <= t < vocab_size for t in word)
        for word in words
    ):
        raise ValueError(
            f"bad_words_ids must be a non-empty list of non-empty lists of token ids in "
            f"[0, {vocab_size}), got {bad_words_ids!r}"
        )
    return tuple(tuple(int(t) for t in word) for word in words)


def _check_search(
    num_beams: int,
    num_return_sequences: int,
    length_penalty: float,
    early_stopping: bool | str,
    do_sample: bool,
    stream: bool,
) -> tuple[int, int]:
    """Checks the search options against each other; returns (num_beams, num_return_sequences)."""
    num_beams = _count("num_beams", num_beams, 1)
    num_return_sequences = _count("num_return_sequences", num_return_sequences, 1)
    if num_beams == 1 and (length_penalty, early_stopping) != (1.0, False):
        raise ValueError("length_penalty and early_stopping apply only with num_beams > 1")
    if num_beams > 1 and num_return_sequences > num_beams:
        raise ValueError(
            f"num_return_sequences ({num_return_sequences}) must be <= num_beams ({num_beams})"
        )
    if num_beams == 1 and not do_sample and num_return_sequences > 1:
        raise ValueError(
            "greedy decoding returns one sequence per prompt: num_return_sequences > 1 needs "
            "do_sample=True or num_beams >= num_return_sequences"
        )
    if early_stopping not in (True, False, "never") or not isinstance(early_stopping, bool | str):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    if not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty must be a finite number, got {length_penalty}")
    if stream and num_beams > 1:
        raise ValueError(
            "streaming needs num_beams=1: a beam search decides its tokens only at the end"
        )
    return num_beams, num_return_sequences


@dataclasses.dataclass(frozen=True)
class _Plan:
    """A validated call: the arrays and the static settings of one loop."""

    input_ids: jax.Array
    mask: jax.Array
    rng: jax.Array
    settings: _Settings | beams.BeamSettings


def _plan(
    model: GPT2LMHeadModel,
    input_ids: jax.Array,
    attention_mask: jax.Array | None,
    *,
    max_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_k: int,
    top_p: float,
    eos_token_id: int | Sequence[int] | None,
    pad_token_id: int | None,
    rng: jax.Array | int | None,
    num_beams: int,
    num_return_sequences: int,
    length_penalty: float,
    early_stopping: bool | str,
    repetition_penalty: float,
    no_repeat_ngram_size: int,
    min_new_tokens: int,
    bad_words_ids: Sequence[Sequence[int]] | None,
    stream: bool,
) -> _Plan:
    config = model.config
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise ValueError(
            f"input_ids must be [batch, prompt_length] with prompt_length >= 1, got shape "
            f"{input_ids.shape}"
        )
    check_ids(input_ids, config.vocab_size, "input_ids")
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
        temperature = _positive_float("temperature", temperature)
        top_k = _count("top_k", top_k, 0)
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must satisfy 0 < top_p <= 1, got {top_p}")
    num_beams, num_return_sequences = _check_search(
        num_beams, num_return_sequences, length_penalty, early_stopping, do_sample, stream
    )
    eos = _as_tuple(config.eos_token_id if eos_token_id is None else eos_token_id)
    if pad_token_id is None:
        pad_token_id = config.pad_token_id if config.pad_token_id is not None else (eos or (0,))[0]
    if rng is None or isinstance(rng, int):
        rng = jax.random.key(rng or 0)  # unused by greedy decoding
    processors = Processors(
        prompt_length=prompt_len,
        eos_token_ids=eos,
        repetition_penalty=_positive_float("repetition_penalty", repetition_penalty),
        no_repeat_ngram_size=_count("no_repeat_ngram_size", no_repeat_ngram_size, 0),
        bad_words_ids=_bad_words(bad_words_ids, config.vocab_size),
        min_new_tokens=_count("min_new_tokens", min_new_tokens, 0),
        do_sample=do_sample,
        temperature=float(temperature),
        top_k=top_k,
        top_p=float(top_p),
        # A beam search keeps a token besides the end-of-sequence ones, as transformers does.
        min_tokens_to_keep=len(eos) + 1 if num_beams > 1 else 1,
    )
    copies = max(num_beams, num_return_sequences)
    input_ids, mask = jnp.repeat(input_ids, copies, axis=0), jnp.repeat(mask, copies, axis=0)
    if num_beams == 1:
        settings = _Settings(max_new_tokens, eos, pad_token_id, processors, stream)
    else:
        settings = beams.BeamSettings(
            num_beams=num_beams,
            length_penalty=float(length_penalty),
            early_stopping=early_stopping,
            num_return_sequences=num_return_sequences,
            max_length=prompt_len + max_new_tokens,
            # transformers fills with `pad_token_id or eos_token_id[0]`.
            fill=pad_token_id if pad_token_id or not eos else eos[0],
            processors=processors,
        )
    return _Plan(input_ids, mask, rng, settings)


def _run(model: GPT2LMHeadModel, plan: _Plan, streamer: Streamer | None) -> jax.Array:
    graphdef, state = nnx.split(model)
    s = plan.settings
    if isinstance(s, beams.BeamSettings):
        tokens, length = _beam_search(graphdef, state, plan.input_ids, plan.mask, plan.rng, s)
        return tokens[:, : int(length)]
    if streamer is None:
        tokens, length = _generate(graphdef, state, plan.input_ids, plan.mask, plan.rng, 0, s)
        return tokens[:, : int(length)]
    handle = next(_handles)
    _streamers[handle] = streamer
    try:
        streamer.put(np.asarray(plan.input_ids))
        tokens, length = _generate(graphdef, state, plan.input_ids, plan.mask, plan.rng, handle, s)
        tokens = tokens[:, : int(length)]  # waits for the loop, and so for its callbacks
    finally:
        del _streamers[handle]
    streamer.end()
    return tokens


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
    num_beams: int = 1,
    num_return_sequences: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    min_new_tokens: int = 0,
    bad_words_ids: Sequence[Sequence[int]] | None = None,
    streamer: Streamer | None = None,
) -> jax.Array:
    """Continues each prompt by up to `max_new_tokens` tokens, as transformers' `generate`.

    Args:
      input_ids: prompts `[batch, prompt_length]`, left-padded when of different lengths.
      attention_mask: `[batch, prompt_length]`, 0 on the padding (None: no padding).
      do_sample: sample (with temperature, top_k, top_p) instead of taking the argmax.
      eos_token_id: id(s) that end a row (default: the model config's); `[]` never stops early.
      pad_token_id: what finished rows continue with (default: the config's, else the first
        end-of-sequence id).
      rng: a jax key or an int seed; required for sampling.
      num_beams: beam search when > 1 (with do_sample: beam sampling).
      num_return_sequences: sequences per prompt, rows b * n ... b * n + n - 1 of the result
        (the best beams, best first; or independent samples).
      length_penalty: finished beams score sum(log p) / generated_length ** length_penalty.
      early_stopping: True, False or "never", transformers' beam stopping rules.
      repetition_penalty: > 1 discourages every token already in the row (prompt included,
        padding not).
      no_repeat_ngram_size: no n-gram of this size occurs twice in a row (0: off).
      min_new_tokens: end-of-sequence ids are banned until this many new tokens.
      bad_words_ids: token sequences never generated.
      streamer: gets each step's tokens as they are decided (see `Streamer`; num_beams=1).

    Returns `[batch * num_return_sequences, prompt_length + steps]` int32 token ids (prompts
    included), steps being the number of steps until every row finished, at most
    max_new_tokens, as transformers returns.
    """
    plan = _plan(
        model,
        input_ids,
        attention_mask,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        rng=rng,
        num_beams=num_beams,
        num_return_sequences=num_return_sequences,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size,
        min_new_tokens=min_new_tokens,
        bad_words_ids=bad_words_ids,
        stream=streamer is not None,
    )
    return _run(model, plan, streamer)


class _QueueStreamer:
    """Puts each step's tokens on a queue, then `None` at the end."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self.prompt_seen = False

    def put(self, value: np.ndarray) -> None:
        if self.prompt_seen:
            self.queue.put(value)
        self.prompt_seen = True

    def end(self) -> None:
        self.queue.put(None)


def generate_stream(
    model: GPT2LMHeadModel,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    **kwargs,
) -> Iterator[np.ndarray]:
    """`generate` (same arguments, num_beams=1) as an iterator over the new tokens: one int32
    array `[batch * num_return_sequences]` per step, as soon as the step decided it (finished
    rows get pad_token_id). Arguments are checked before this returns; generation runs in a
    background thread, whose errors are raised here, and runs to its end even when the
    iteration stops early."""
    streamer = _QueueStreamer()
    plan = _plan(model, input_ids, attention_mask, **_generate_defaults(kwargs), stream=True)
    failure: list[BaseException] = []

    def work():
        try:
            _run(model, plan, streamer)
        except BaseException as error:  # re-raised in the consumer's thread
            failure.append(error)
            streamer.queue.put(None)

    threading.Thread(target=work, daemon=True).start()

    def tokens() -> Iterator[np.ndarray]:
        while (step := streamer.queue.get()) is not None:
            yield step
        if failure:
            raise failure[0]

    return tokens()


def _generate_defaults(kwargs: dict) -> dict:
    """kwargs completed with generate's defaults; unknown names raise as a call would."""
    parameters = inspect.signature(generate).parameters
    names = [n for n, p in parameters.items() if p.kind is p.KEYWORD_ONLY and n != "streamer"]
    unknown = set(kwargs) - set(names)
    if unknown:
        raise TypeError(f"generate_stream got unexpected arguments {sorted(unknown)}")
    defaults = {n: parameters[n].default for n in names}
    if "max_new_tokens" not in kwargs:
        raise TypeError("generate_stream needs max_new_tokens=")
    return {**defaults, **kwargs}
