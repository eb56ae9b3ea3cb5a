"""generate against transformers' generate, token for token: beam search, the logits processors,
their combinations, and streaming. Sampling draws from different generators, so for sampling the
processed scores are compared instead of the tokens."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import GenerationConfig

import polyformer as pf
from polyformer.models.gpt import generate
from polyformer.models.gpt.generate import generate_stream
from polyformer.models.gpt.logits_process import Processors, process
from tests.models.gpt.reference import left_padded, random_hf_model

PROMPT_LENGTHS = [7, 3, 5]
MAX_NEW = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(transformers model, our model, input_ids, mask, eos ids) at TINY sizes but two layers
    (every step of these tests runs both models); the end-of-sequence ids are tokens the model
    produces early, so that rows and beams really end."""
    hf_model = random_hf_model(n_layer=2)
    path = tmp_path_factory.mktemp("tiny-gpt2-2-layers")
    hf_model.save_pretrained(path)
    model = pf.from_pretrained(path)
    input_ids, mask = left_padded(hf_model.config.vocab_size, PROMPT_LENGTHS, seed=4)
    free = np.asarray(generate(model, input_ids, mask, max_new_tokens=MAX_NEW, eos_token_id=[]))
    prompt = input_ids.shape[1]
    eos = [int(free[0, prompt + 3]), int(free[2, prompt + 1])]
    return hf_model, model, input_ids, mask, eos


def hf_generate(hf_model, input_ids, mask, **kwargs) -> np.ndarray:
    return hf_model.generate(
        torch.as_tensor(input_ids), attention_mask=torch.as_tensor(mask), **kwargs
    ).numpy()


GREEDY = [
    dict(repetition_penalty=1.3),
    dict(repetition_penalty=0.7),
    dict(no_repeat_ngram_size=1),
    dict(no_repeat_ngram_size=2),
    dict(no_repeat_ngram_size=3, repetition_penalty=1.2),
    dict(min_new_tokens=6),
    dict(bad_words_ids="generated"),
    dict(
        min_new_tokens=3, no_repeat_ngram_size=2, repetition_penalty=1.1, bad_words_ids="generated"
    ),
]
BEAM = [
    dict(num_beams=2),
    dict(num_beams=3, length_penalty=0.0),
    dict(num_beams=3, length_penalty=2.0, early_stopping=True),
    dict(num_beams=4, early_stopping="never", num_return_sequences=4),
    dict(num_beams=4, early_stopping="never", length_penalty=-0.5, num_return_sequences=2),
    dict(num_beams=3, early_stopping=True, num_return_sequences=3, repetition_penalty=1.5),
    dict(num_beams=3, no_repeat_ngram_size=2),
    dict(num_beams=2, min_new_tokens=5, early_stopping=True),
    dict(num_beams=3, bad_words_ids="generated", num_return_sequences=2),
    dict(num_beams=5, length_penalty=0.3, early_stopping="never", no_repeat_ngram_size=3),
    dict(num_beams=3, repetition_penalty=0.8, min_new_tokens=2, bad_words_ids="generated"),
]


TWO_EOS = [
    dict(two_eos=True, repetition_penalty=1.3, min_new_tokens=2),
    dict(two_eos=True, num_beams=4, num_return_sequences=3, early_stopping=True),
    dict(two_eos=True, num_beams=3, length_penalty=0.5, bad_words_ids="generated"),
]


@pytest.fixture(scope="module")
def bad_words(setup):
    """Sequences that the unconstrained greedy and beam searches produce: one token, two and
    three tokens, and an end-of-sequence id alone (which transformers drops from the list)."""
    _, model, input_ids, mask, eos = setup
    free = np.asarray(
        generate(model, input_ids, mask, max_new_tokens=MAX_NEW, eos_token_id=[], num_beams=3)
    )
    p = input_ids.shape[1]
    return [free[1, p : p + 1], free[0, p : p + 2], free[2, p + 3 : p + 6], [eos[0]]]


@pytest.mark.parametrize(
    "options", GREEDY + BEAM + TWO_EOS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items())
)
def test_tokens_equal_transformers(setup, bad_words, options):
    hf_model, model, input_ids, mask, eos = setup
    options = dict(options)
    if options.get("bad_words_ids") == "generated":
        options["bad_words_ids"] = [[int(t) for t in word] for word in bad_words]
    n_eos = 2 if options.pop("two_eos", False) else 1
    common = dict(max_new_tokens=MAX_NEW, eos_token_id=eos[:n_eos], pad_token_id=0)
    got = np.asarray(generate(model, input_ids, mask, **common, **options))
    want = hf_generate(hf_model, input_ids, mask, do_sample=False, **common, **options)
    np.testing.assert_array_equal(got, want)


def test_beams_end_early_and_are_filled_as_transformers_fills_them(setup):
    """A search where finished beams of different lengths are returned: the short ones are
    filled with `pad_token_id or eos_token_id[0]`, and a pad of 7 shows which one was used.
    Without a length penalty a short hypothesis is not outscored by long ones."""
    hf_model, model, input_ids, mask, _ = setup
    options = dict(num_beams=4, num_return_sequences=4, max_new_tokens=MAX_NEW, length_penalty=0.0)
    free = np.asarray(generate(model, input_ids, mask, eos_token_id=[], **options))
    prompt = input_ids.shape[1]
    eos = int(free[4, prompt + 1])  # the second token of prompt 1's best beam
    for pad in (0, 7):
        got = np.asarray(
            generate(model, input_ids, mask, eos_token_id=eos, pad_token_id=pad, **options)
        )
        want = hf_generate(hf_model, input_ids, mask, eos_token_id=eos, pad_token_id=pad, **options)
        np.testing.assert_array_equal(got, want)
        short = got[:, -1] == (pad or eos)
        assert short.any() and (got[short, -2] == (pad or eos)).all()


def test_beams_without_padding_or_end_of_sequence(setup):
    hf_model, model, input_ids, mask, _ = setup
    # transformers fails on pad_token_id=0 without an end-of-sequence id (`0 or eos[0]`).
    options = dict(num_beams=3, num_return_sequences=2, max_new_tokens=8, eos_token_id=[])
    got = np.asarray(generate(model, input_ids[:1], mask[:1], pad_token_id=5, **options))
    want = hf_generate(hf_model, input_ids[:1], mask[:1], pad_token_id=5, **options)
    np.testing.assert_array_equal(got, want)
    assert got.shape == (2, 7 + 8)


def test_beam_sampling_at_low_temperature_is_beam_search(setup):
    """Beam sampling draws without replacement from the accumulated scores over temperature: at
    a temperature near 0 the draw is the top-k, so the result is transformers' beam search."""
    hf_model, model, input_ids, mask, eos = setup
    options = dict(num_beams=3, num_return_sequences=2, max_new_tokens=MAX_NEW, eos_token_id=eos)
    got = generate(model, input_ids, mask, do_sample=True, temperature=1e-4, rng=0, **options)
    want = hf_generate(hf_model, input_ids, mask, pad_token_id=0, **options)
    np.testing.assert_array_equal(np.asarray(got), want)
    hot = dict(options, do_sample=True, temperature=2.0, top_k=0)
    first = np.asarray(generate(model, input_ids, mask, rng=1, **hot))
    np.testing.assert_array_equal(first, generate(model, input_ids, mask, rng=1, **hot))
    assert not np.array_equal(first, generate(model, input_ids, mask, rng=2, **hot))


def hf_processors(hf_model, mask, prompt_length, eos, **options):
    """transformers' processor list for these options, in the order its generate builds it."""
    config = GenerationConfig(eos_token_id=eos, pad_token_id=0, **options)
    hf_model._prepare_special_tokens(config, kwargs_has_attention_mask=True, device="cpu")
    return hf_model._get_logits_processor(
        config,
        input_ids_seq_length=prompt_length,
        device="cpu",
        model_kwargs={"attention_mask": torch.as_tensor(mask)},
    )


SAMPLING = [
    dict(do_sample=True, temperature=0.7, top_k=20, repetition_penalty=1.4),
    dict(do_sample=True, top_k=0, top_p=0.9, no_repeat_ngram_size=2, min_new_tokens=8),
    dict(do_sample=True, temperature=1.3, top_k=5, top_p=0.8, bad_words_ids=[[3], [4, 5], [9]]),
    dict(do_sample=True, num_beams=3, top_k=1, top_p=0.5, repetition_penalty=0.9),
    dict(do_sample=False, repetition_penalty=1.2, no_repeat_ngram_size=1, bad_words_ids=[[9, 3]]),
]


@pytest.mark.parametrize(
    "options", SAMPLING, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items())
)
def test_processed_scores_equal_transformers(tiny_checkpoint, options):
    """The processed scores for a left-padded buffer with repeats (so that every processor has
    something to do), at several lengths, equal transformers' processors on the same rows."""
    hf_model, _ = tiny_checkpoint
    rng = np.random.default_rng(0)
    prompt_length, vocab = 6, hf_model.config.vocab_size
    tokens = rng.integers(0, 12, (4, 16))  # a small alphabet repeats n-grams
    tokens[:, :4] = [[9, 3, 4, 5]]  # completes the two-token bad word [4, 5] in row 0 or not
    mask = np.ones((4, prompt_length), np.int64)
    mask[1, :2] = mask[2, :5] = 0
    eos = [9, 11]
    extra = {k: v for k, v in options.items() if k != "num_beams"}
    ours = Processors(
        prompt_length=prompt_length,
        eos_token_ids=tuple(eos),
        repetition_penalty=extra.pop("repetition_penalty", 1.0),
        no_repeat_ngram_size=extra.pop("no_repeat_ngram_size", 0),
        bad_words_ids=tuple(map(tuple, extra.pop("bad_words_ids", ()))),
        min_new_tokens=extra.pop("min_new_tokens", 0),
        do_sample=extra.pop("do_sample"),
        temperature=extra.pop("temperature", 1.0),
        top_k=extra.pop("top_k", 50),
        top_p=extra.pop("top_p", 1.0),
        min_tokens_to_keep=len(eos) + 1 if options.get("num_beams", 1) > 1 else 1,
    )
    assert not extra
    processors = hf_processors(hf_model, mask, prompt_length, eos, **options)
    first_real = np.argmax(mask, axis=1)
    for cur_len in (prompt_length, 9, 13):
        scores = torch.randn(4, vocab, generator=torch.Generator().manual_seed(cur_len)) * 3
        scores[:, :12] += 4  # the repeated tokens are the likely ones
        want = processors(torch.as_tensor(tokens[:, :cur_len]), scores.clone()).numpy()
        got = process(
            jnp.asarray(scores.numpy()), jnp.asarray(tokens, jnp.int32), cur_len, first_real, ours
        )
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
        np.testing.assert_allclose(
            np.where(np.isneginf(want), 0, got), np.nan_to_num(want, neginf=0), rtol=1e-6
        )


def test_sampled_tokens_keep_the_processors_promises(setup):
    _, model, input_ids, mask, eos = setup
    prompt = input_ids.shape[1]
    options = dict(max_new_tokens=MAX_NEW, do_sample=True, temperature=1.5, top_k=0)
    tokens = np.asarray(
        generate(model, input_ids, mask, rng=0, no_repeat_ngram_size=1, eos_token_id=[], **options)
    )
    for row in tokens:  # no token twice, the prompt's padding included
        new = set(row[prompt:].tolist())
        assert len(new) == MAX_NEW and not new & set(row[:prompt].tolist())
    samples = np.asarray(
        generate(
            model,
            input_ids,
            mask,
            rng=1,
            num_return_sequences=4,
            min_new_tokens=MAX_NEW,
            eos_token_id=eos,
            bad_words_ids=[[t] for t in range(20)],
            **options,
        )
    )
    assert samples.shape == (3 * 4, prompt + MAX_NEW)
    new = samples[:, prompt:]
    assert not np.isin(new, eos).any() and (new >= 20).all()
    np.testing.assert_array_equal(samples[:4, :prompt], np.repeat(input_ids[:1], 4, axis=0))
    assert len({tuple(row) for row in new[:4]}) > 1


class Recorder:
    """A streamer that records what it is given, as transformers' streamers receive it."""

    def __init__(self):
        self.calls = []

    def put(self, value):
        self.calls.append(np.asarray(value))

    def end(self):
        self.calls.append("end")


@pytest.mark.parametrize("options", [dict(), dict(repetition_penalty=1.3, min_new_tokens=4)])
def test_streamer_gets_what_transformers_streamer_gets(setup, options):
    hf_model, model, input_ids, mask, eos = setup
    common = dict(max_new_tokens=MAX_NEW, eos_token_id=eos[0], pad_token_id=0, **options)
    ours, theirs = Recorder(), Recorder()
    tokens = generate(model, input_ids, mask, streamer=ours, **common)
    hf_model.generate(
        torch.as_tensor(input_ids), attention_mask=torch.as_tensor(mask), streamer=theirs, **common
    )
    assert len(ours.calls) == len(theirs.calls) and ours.calls[-1] == "end"
    for a, b in zip(ours.calls[:-1], theirs.calls[:-1], strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        np.stack(ours.calls[1:-1], axis=1), tokens[:, input_ids.shape[1] :]
    )


def test_generate_stream_yields_each_step_without_recompiling(setup):
    from polyformer.models.gpt.generate import _generate

    _, model, input_ids, mask, eos = setup
    options = dict(max_new_tokens=MAX_NEW, eos_token_id=eos[0], pad_token_id=0)
    tokens = np.asarray(generate(model, input_ids, mask, **options))
    steps = list(generate_stream(model, input_ids, mask, **options))
    np.testing.assert_array_equal(np.stack(steps, axis=1), tokens[:, input_ids.shape[1] :])
    compiled = _generate._cache_size()
    again = list(generate_stream(model, input_ids, mask, **options))  # a new stream, same loop
    assert _generate._cache_size() == compiled
    np.testing.assert_array_equal(again, steps)
