"""pf.pipeline("table-question-answering") and `polyformer table-qa` against transformers'
TableQuestionAnsweringPipeline on one random-weight checkpoint with the test vocab."""

import json

import numpy as np
import pandas as pd
import pytest

import polyformer as pf
from polyformer import cli
from tests.models.tapas import tables

transformers = pytest.importorskip("transformers")
reference = pytest.importorskip("tests.models.tapas.reference")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(transformers' pipeline, the checkpoint directory: model, vocab.txt, tokenizer config)."""
    directory = tmp_path_factory.mktemp("tapas-pipeline")
    vocab = tables.write_vocab(directory)
    # A short model_max_length: rows get dropped from small tables, inputs stay short.
    tokenizer = transformers.TapasTokenizer(str(vocab), model_max_length=128)
    tokenizer.save_pretrained(directory)
    model = reference.random_hf_model(
        vocab_size=len(tokenizer.vocab),
        max_position_embeddings=512,
        type_vocab_sizes=[3, 256, 256, 2, 256, 256, 10],
    )
    model.save_pretrained(directory)
    theirs = transformers.pipeline("table-question-answering", model=model, tokenizer=tokenizer)
    return theirs, directory


@pytest.fixture(scope="module")
def pipe(checkpoint):
    return pf.pipeline("table-question-answering", checkpoint[1])


def _comparable(answers):
    """transformers' answers with our extra field dropped and tuples as lists."""
    answers = answers if isinstance(answers, list) else [answers]
    return [
        {k: json.loads(json.dumps(v)) for k, v in answer.items() if k != "result"}
        for answer in answers
    ]


@pytest.mark.parametrize("name", ["chapters", "numbers"])
@pytest.mark.parametrize("sequential", [False, True])
def test_answers_match_transformers(checkpoint, pipe, name, sequential):
    theirs, _ = checkpoint
    table, queries = tables.all_tables()[name], tables.QUERIES[name]
    ours = pipe(table, queries, sequential=sequential)
    expected = theirs(table=table, query=list(queries), sequential=sequential)
    assert _comparable(ours) == _comparable(expected)
    assert all(answer["aggregator"] in {"NONE", "SUM", "AVERAGE", "COUNT"} for answer in ours)
    assert any(answer["coordinates"] for answer in ours)


def test_single_question_csv_and_result(checkpoint, pipe, tmp_path):
    theirs, _ = checkpoint
    table = tables.chapters()
    path = tmp_path / "chapters.csv"
    table.to_csv(path, index=False)
    query = tables.BOOK_QUERIES[1]
    ours = pipe(path, query)
    assert isinstance(ours, dict)
    assert _comparable(ours) == _comparable(theirs(table=table, query=query))
    if ours["aggregator"] in ("SUM", "COUNT") and ours["cells"]:
        numbers = [float(cell) for cell in ours["cells"]] if ours["aggregator"] == "SUM" else []
        expected = sum(numbers) if numbers else len(ours["cells"])
        assert ours["result"] == pytest.approx(expected)


def test_dropped_rows_warn_and_match_transformers(checkpoint, pipe):
    theirs, _ = checkpoint
    table, queries = tables.long_table(20), tables.QUERIES["long"]
    with pytest.warns(UserWarning, match="the table has 20 rows; only the first"):
        ours = pipe(table, queries)
    assert _comparable(ours) == _comparable(theirs(table=table, query=queries))


def test_non_string_cells_are_converted_with_a_warning(checkpoint, pipe):
    theirs, _ = checkpoint
    numeric = pd.DataFrame({"chapter": range(6), "pages": [10, 36, 24, 46, 19, 3.5]})
    with pytest.warns(UserWarning, match="not strings"):
        ours = pipe(numeric, "How many chapters have more than 20 pages?")
    expected = theirs(table=numeric.astype(str), query="How many chapters have more than 20 pages?")
    assert _comparable(ours) == _comparable(expected)


def test_bad_input_is_a_clear_error(pipe, tmp_path):
    with pytest.raises(ValueError, match="the table is empty"):
        pipe(pd.DataFrame({"a": []}), "which?")
    with pytest.raises(ValueError, match="the table is empty"):
        pipe(pd.DataFrame(), "which?")
    empty_csv = tmp_path / "empty.csv"
    empty_csv.write_text("")
    with pytest.raises(ValueError, match="holds no table"):
        pipe(empty_csv, "which?")
    with pytest.raises(FileNotFoundError):
        pipe(tmp_path / "missing.csv", "which?")
    with pytest.raises(ValueError, match="non-empty question"):
        pipe(tables.chapters(), ["which?", " "])
    with pytest.raises(ValueError, match="more than max_length 128"):
        pipe(tables.chapters(), "which chapter " * 70)
    with pytest.raises(ValueError, match="leaves no room for a single table row"):
        pipe(tables.chapters(), ["which chapter?", "which chapter " * 60])
    pipe.tokenizer.max_question_length = 4
    try:
        with pytest.raises(ValueError, match="at most 4"):
            pipe(tables.chapters(), tables.BOOK_QUERIES[0])
    finally:
        pipe.tokenizer.max_question_length = None


def test_cli(checkpoint, tmp_path, capsys):
    _, directory = checkpoint
    path = tmp_path / "chapters.csv"
    tables.chapters().to_csv(path, index=False)
    assert (
        cli.main(["table-qa", str(directory), str(path), *tables.BOOK_QUERIES[:2], "--json"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    answers = [json.loads(line) for line in lines]
    assert [a["question"] for a in answers] == tables.BOOK_QUERIES[:2]
    assert {"answer", "coordinates", "cells", "aggregator", "result"} <= set(answers[0])

    assert cli.main(["table-qa", str(directory), str(path), tables.BOOK_QUERIES[0]]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == tables.BOOK_QUERIES[0] and out[1].startswith("  ")

    assert cli.main(["table-qa", str(directory), str(tmp_path / "no.csv"), "which?"]) == 2
    assert "no table file" in capsys.readouterr().err


def test_pipeline_batch_inputs_are_the_tokenizer_output(pipe):
    """The pipeline feeds the model what the tokenizer gives (row-dropping included)."""
    batch = pipe.tokenizer(tables.chapters(), tables.BOOK_QUERIES, truncation=True)
    assert batch["input_ids"].dtype == np.int32 and batch["token_type_ids"].shape[-1] == 7
