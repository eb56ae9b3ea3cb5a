"""generate: token for token what transformers generates, and sampling that keeps its promises."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

import polyformer as pf
from polyformer import attention as A
from polyformer.models.gpt import GPT2Config, GPT2LMHeadModel, generate
from polyformer.models.gpt.generate import generate_stream
from polyformer.models.gpt.logits_process import top_k_filter, top_p_filter
from tests.models.gpt.reference import left_padded, logits

PROMPT_LENGTHS = [7, 3, 5]


def test_greedy_equals_transformers_with_left_padding_and_eos(tiny_checkpoint):
    hf_model, path = tiny_checkpoint
    model = pf.from_pretrained(path)
    input_ids, mask = left_padded(hf_model.config.vocab_size, PROMPT_LENGTHS, seed=4)
    # An end-of-sequence id that row 0 produces at its 4th step, so that one row stops early.
    unstopped = generate(model, input_ids, mask, max_new_tokens=10, eos_token_id=[])
    eos = int(unstopped[0, input_ids.shape[1] + 3])
    got = generate(model, input_ids, mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=0)
    want = hf_model.generate(
        torch.as_tensor(input_ids),
        attention_mask=torch.as_tensor(mask),
        max_new_tokens=10,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=0,
    ).numpy()
    np.testing.assert_array_equal(got, want)
    assert (np.asarray(got[0, input_ids.shape[1] + 4 :]) == 0).all()


def teacher_forced_argmax(model, tokens, prompt_mask):
    """The greedy choice of the full forward pass at every generated position of `tokens`."""
    mask = jnp.concatenate(
        [prompt_mask, jnp.ones((tokens.shape[0], tokens.shape[1] - prompt_mask.shape[1]), int)], 1
    )
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    full = logits(model, tokens, mask, positions)
    return full[:, prompt_mask.shape[1] - 1 : -1]


@pytest.mark.parametrize("kernel", [A.Dense(), A.Favor(num_features=64)], ids=["dense", "favor"])
def test_greedy_decoding_agrees_with_the_full_forward_pass(kernel):
    model = GPT2LMHeadModel(GPT2Config.tiny(attention=kernel), rngs=nnx.Rngs(1))
    input_ids, mask = left_padded(1031, PROMPT_LENGTHS, seed=5)
    tokens = generate(model, input_ids, mask, max_new_tokens=9, eos_token_id=[])
    assert tokens.shape == (3, 7 + 9)
    step_logits = teacher_forced_argmax(model, tokens, jnp.asarray(mask))
    np.testing.assert_array_equal(tokens[:, 7:], jnp.argmax(step_logits, -1))


def test_sampling_is_seeded_and_stays_inside_top_k():
    model = GPT2LMHeadModel(GPT2Config.tiny(n_layer=1), rngs=nnx.Rngs(2))
    input_ids, mask = left_padded(1031, PROMPT_LENGTHS, seed=6)
    options = dict(max_new_tokens=12, do_sample=True, temperature=0.7, top_k=5, top_p=0.9)
    options["eos_token_id"] = []
    first = generate(model, input_ids, mask, rng=0, **options)
    np.testing.assert_array_equal(first, generate(model, input_ids, mask, rng=0, **options))
    assert not np.array_equal(first, generate(model, input_ids, mask, rng=1, **options))
    step_logits = teacher_forced_argmax(model, first, jnp.asarray(mask))
    chosen = jnp.take_along_axis(step_logits, first[:, 7:, None], axis=-1)
    assert int(jnp.max(jnp.sum(step_logits > chosen, axis=-1))) < 5  # rank below top_k
    greedy = generate(model, input_ids, mask, max_new_tokens=12, eos_token_id=[])
    top_1 = dict(options, top_k=1)
    np.testing.assert_array_equal(generate(model, input_ids, mask, rng=3, **top_1), greedy)


@pytest.mark.parametrize("k, p", [(1, 1.0), (7, 1.0), (0, 0.3), (0, 0.95), (50, 0.8)])
def test_filters_equal_transformers_warpers(k, p):
    scores = torch.randn(4, 300, generator=torch.Generator().manual_seed(k))
    want = scores
    if k:
        want = TopKLogitsWarper(k)(None, want)
    if p < 1.0:
        want = TopPLogitsWarper(p)(None, want)
    got = jnp.asarray(scores.numpy())
    if k:
        got = top_k_filter(got, k)
    if p < 1.0:
        got = top_p_filter(got, p)
    np.testing.assert_array_equal(np.isfinite(got), torch.isfinite(want).numpy())


@dataclasses.dataclass
class Case:
    kwargs: dict
    message: str
    mask: tuple = (1, 1, 1)


@pytest.mark.parametrize(
    "case",
    [
        Case(dict(max_new_tokens=35), r"prompt \(3\) \+ max_new_tokens \(35\) = 38 exceeds"),
        Case(dict(max_new_tokens=0), "at least 1"),
        Case(dict(max_new_tokens=2), "pad on the left", mask=(1, 1, 0)),
        Case(dict(max_new_tokens=2, do_sample=True), "sampling needs rng"),
        Case(dict(max_new_tokens=2, temperature=0.5), "only with do_sample=True"),
        Case(dict(max_new_tokens=2, do_sample=True, rng=0, top_p=0.0), "0 < top_p <= 1"),
        Case(dict(max_new_tokens=2, do_sample=True, rng=0, top_k=-1), "top_k must be an integer"),
        *[
            Case(
                dict(max_new_tokens=2, do_sample=True, rng=0, temperature=t),
                f"temperature must be a finite positive number, got {t}",
            )
            for t in (float("nan"), float("inf"), 0.0, -1.0)
        ],
        Case(dict(max_new_tokens=2, num_beams=0), "num_beams must be an integer >= 1, got 0"),
        Case(
            dict(max_new_tokens=2, num_beams=2, num_return_sequences=3),
            r"num_return_sequences \(3\) must be <= num_beams \(2\)",
        ),
        Case(dict(max_new_tokens=2, num_return_sequences=2), "greedy decoding returns one"),
        Case(dict(max_new_tokens=2, length_penalty=2.0), "only with num_beams > 1"),
        Case(dict(max_new_tokens=2, num_beams=2, early_stopping="soon"), "True, False or 'never'"),
        Case(dict(max_new_tokens=2, num_beams=2, length_penalty=float("nan")), "length_penalty"),
        *[
            Case(
                dict(max_new_tokens=2, repetition_penalty=p), "repetition_penalty must be a finite "
            )
            for p in (0.0, float("nan"))
        ],
        Case(dict(max_new_tokens=2, no_repeat_ngram_size=-1), "no_repeat_ngram_size must be"),
        Case(dict(max_new_tokens=2, min_new_tokens=-2), "min_new_tokens must be an integer >= 0"),
        Case(dict(max_new_tokens=2, bad_words_ids=[[]]), r"bad_words_ids must be .* \[0, 1031\)"),
        Case(dict(max_new_tokens=2, bad_words_ids=[[3, 1031]]), "bad_words_ids must be"),
        Case(dict(max_new_tokens=2, num_beams=2, streamer=object()), "streaming needs num_beams=1"),
    ],
    ids=lambda case: case.message,
)
def test_generate_refuses_what_it_cannot_do(case):
    model = GPT2LMHeadModel(GPT2Config.tiny(n_layer=1), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=case.message):
        generate(model, jnp.ones((1, 3), int), jnp.asarray([case.mask]), **case.kwargs)


def test_generate_stream_checks_its_arguments_before_it_returns():
    model = GPT2LMHeadModel(GPT2Config.tiny(n_layer=1), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="streaming needs num_beams=1"):
        generate_stream(model, jnp.ones((1, 3), int), max_new_tokens=2, num_beams=2)
    with pytest.raises(TypeError, match="num_beam"):
        generate_stream(model, jnp.ones((1, 3), int), max_new_tokens=2, num_beam=2)


def test_scanned_layers_generate_the_unscanned_tokens(tmp_path):
    model = GPT2LMHeadModel(GPT2Config.tiny(), rngs=nnx.Rngs(2))
    pf.save_pretrained(model, tmp_path)
    scanned = pf.from_pretrained(tmp_path, scan_layers=True)
    input_ids, mask = left_padded(1031, PROMPT_LENGTHS, seed=6)
    for options in ({}, {"num_beams": 3, "num_return_sequences": 2}):
        want = generate(model, input_ids, mask, max_new_tokens=6, eos_token_id=[], **options)
        got = generate(scanned, input_ids, mask, max_new_tokens=6, eos_token_id=[], **options)
        np.testing.assert_array_equal(got, want)
