"""TextGenerationPipeline and `polyformer generate` with generate's options and streaming."""

import numpy as np
import pytest

import polyformer as pf
from polyformer import cli
from polyformer.models import gpt
from polyformer.models.gpt.pipeline import text_pieces
from polyformer.training.data import save_tokenizer, train_bpe
from tests.models.gpt.reference import random_hf_model

TEXT = ["def add(a, b):\n    return a + b\n", "import os\nprint(os.getcwd())\n"] * 20
PROMPTS = ["def add", "import os"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random GPT-2 whose vocabulary is its tokenizer's, so that every token decodes."""
    path = tmp_path_factory.mktemp("gpt2-with-tokenizer")
    tokenizer = train_bpe(TEXT, vocab_size=300)
    eos = tokenizer.token_to_id("<|endoftext|>")
    random_hf_model(
        vocab_size=tokenizer.get_vocab_size(), bos_token_id=eos, eos_token_id=eos
    ).save_pretrained(path)
    save_tokenizer(tokenizer, path)
    return path


@pytest.fixture(scope="module")
def pipe(checkpoint):
    return pf.pipeline("text-generation", checkpoint)


def expected(pipe, prompts, n, **kwargs):
    """What the pipeline should return: generate's rows b * n ... b * n + n - 1 per prompt."""
    batch = pipe.tokenizer(prompts)
    tokens = gpt.generate(pipe.model, batch["input_ids"], batch["attention_mask"], **kwargs)
    assert tokens.shape[0] == len(prompts) * n
    length = batch["input_ids"].shape[1]
    return [
        [
            {"generated_text": prompt + pipe.tokenizer.decode(row[length:], True)}
            for row in tokens[b * n : b * n + n]
        ]
        for b, prompt in enumerate(prompts)
    ]


@pytest.mark.parametrize(
    "options",
    [
        dict(num_beams=3, num_return_sequences=2, length_penalty=0.5, early_stopping="never"),
        dict(do_sample=True, rng=3, num_return_sequences=3, top_k=0, temperature=0.7),
        dict(repetition_penalty=1.5, no_repeat_ngram_size=2, min_new_tokens=4),
    ],
)
def test_the_pipeline_passes_generates_options_and_returns_every_sequence(pipe, options):
    n = options.get("num_return_sequences", 1)
    results = pipe(PROMPTS, max_new_tokens=5, **options)
    assert results == expected(pipe, PROMPTS, n, max_new_tokens=5, **options)
    assert [len(r) for r in results] == [n, n]
    assert pipe(PROMPTS[0], max_new_tokens=5, **options) == results[0]


def test_stream_yields_the_prompt_then_pieces_that_make_the_pipelines_text(pipe):
    pieces = list(pipe.stream("def add", max_new_tokens=8))
    assert pieces[0] == "def add"
    assert len(pieces) > 2
    assert "".join(pieces) == pipe("def add", max_new_tokens=8)[0]["generated_text"]
    sampled = "".join(pipe.stream("def add", max_new_tokens=8, do_sample=True, rng=1))
    assert sampled == pipe("def add", max_new_tokens=8, do_sample=True, rng=1)[0]["generated_text"]


def test_stream_checks_its_arguments_before_yielding(pipe):
    with pytest.raises(ValueError, match="num_beams=1"):
        next(pipe.stream("def add", max_new_tokens=3, num_beams=2))
    with pytest.raises(ValueError, match="non-empty prompt"):
        next(pipe.stream("", max_new_tokens=3))


def test_text_pieces_hold_back_an_incomplete_character_until_it_is_complete():
    # Token 1 and 2 are the two bytes of "é"; alone, the first decodes to U+FFFD.
    pieces = {(): "", (0,): "a", (0, 1): "a\ufffd", (0, 1, 2): "aé", (0, 1, 2, 3): "aéb"}
    steps = [np.array([t], np.int32) for t in range(4)]
    assert list(text_pieces(lambda ids: pieces[tuple(ids)], steps)) == ["a", "é", "b"]
    # An incomplete character at the very end is printed as decoded.
    assert list(text_pieces(lambda ids: pieces[tuple(ids)], steps[:2])) == ["a", "\ufffd"]


def run(capsys, *argv):
    code = cli.main(["generate", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_streams_one_prompt_as_the_pipeline_completes_it(pipe, checkpoint, capsys, monkeypatch):
    writes = []
    monkeypatch.setattr(
        "builtins.print", lambda *a, end="\n", flush=False: writes.append(("".join(a), end, flush))
    )
    assert cli.main(["generate", str(checkpoint), "def add", "--max-new-tokens", "8"]) == 0
    text = pipe("def add", max_new_tokens=8)[0]["generated_text"]
    assert "".join(w + end for w, end, _ in writes) == text + "\n"
    assert len(writes) > 2 and all(flush for _, end, flush in writes if end == "")


@pytest.mark.parametrize(
    ("argv", "options"),
    [
        (["--do-sample", "--seed", "4", "--top-k", "0"], dict(do_sample=True, rng=4, top_k=0)),
        (["--do-sample"], dict(do_sample=True, rng=0)),
        (
            ["--num-beams", "3", "--num-return-sequences", "2", "--length-penalty", "2.0",
             "--early-stopping", "true"],
            dict(num_beams=3, num_return_sequences=2, length_penalty=2.0, early_stopping=True),
        ),
        (
            ["--repetition-penalty", "1.3", "--no-repeat-ngram-size", "2", "--min-new-tokens",
             "5"],
            dict(repetition_penalty=1.3, no_repeat_ngram_size=2, min_new_tokens=5),
        ),
    ],
)  # fmt: skip
def test_cli_options_are_transformers_spellings_of_generates(
    pipe, checkpoint, capsys, argv, options
):
    code, out, err = run(capsys, checkpoint, *PROMPTS, "--max-new-tokens", 6, *argv)
    assert (code, err) == (0, "")
    results = pipe(PROMPTS, max_new_tokens=6, **options)
    assert out == "".join(r["generated_text"] + "\n" for rows in results for r in rows)


def test_cli_bad_words_are_never_generated(pipe, checkpoint, capsys):
    _, free, _ = run(capsys, checkpoint, "def add", "--max-new-tokens", 8)
    banned = pipe.tokenizer.decode(pipe.tokenizer.encode(free[len("def add") :])[:1])
    code, out, _ = run(capsys, checkpoint, "def add", "--max-new-tokens", 8, "--bad-words", banned)
    ids = [pipe.tokenizer.encode(w) for w in (banned, " " + banned.lstrip())]
    want = pipe("def add", max_new_tokens=8, bad_words_ids=ids)[0]["generated_text"]
    assert code == 0 and out == want + "\n" != free


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--temperature", "0.5"], "--temperature only apply to sampling: add --do-sample"),
        (["--top-k", "3", "--seed", "1"], "--top-k, --seed only apply to sampling"),
        (["--num-return-sequences", "2"], "num_return_sequences > 1 needs"),
        (["--length-penalty", "0.5"], "only with num_beams > 1"),
        (["--num-beams", "2", "--num-return-sequences", "3"], "must be <= num_beams"),
    ],
)
def test_cli_options_that_do_not_apply_are_one_line_errors(checkpoint, capsys, argv, message):
    code, out, err = run(capsys, checkpoint, "def add", "--max-new-tokens", 3, *argv)
    assert code == 2 and out == ""
    assert message in err and err.count("\n") == 1


def test_cli_early_stopping_takes_true_false_or_never(checkpoint, capsys):
    with pytest.raises(SystemExit):
        cli.main(["generate", str(checkpoint), "x", "--early-stopping", "maybe"])
    assert "invalid choice" in capsys.readouterr().err
