"""The table tokenizer against transformers' TapasTokenizer, feature by feature."""

import json

import numpy as np
import pandas as pd
import pytest

from polyformer.models.tapas.config import TOKEN_TYPES
from polyformer.models.tapas.tokenizer import TapasTokenizer
from tests.models.tapas import tables

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tapas-vocab")
    tables.write_vocab(directory)
    return directory


@pytest.fixture(scope="module")
def pair(vocab_dir):
    """(ours, transformers'), both from the same vocab.txt and tokenizer_config.json."""
    theirs = transformers.TapasTokenizer(str(vocab_dir / "vocab.txt"))
    theirs.save_pretrained(vocab_dir)
    return TapasTokenizer.from_pretrained(vocab_dir), theirs


def _hf(theirs, table, queries, **kwargs):
    kwargs.setdefault("padding", True)
    return theirs(table, list(queries), return_tensors="np", **kwargs)


@pytest.mark.parametrize("name", ["chapters", "dates", "numbers"])
def test_tables_match_transformers(pair, name):
    ours, theirs = pair
    table, queries = tables.all_tables()[name], tables.QUERIES[name]
    out = ours(table, queries, padding=True)
    tables.assert_same_encoding(out, _hf(theirs, table, queries, padding=True))
    assert out["token_type_ids"].shape == (*out["input_ids"].shape, 7)


def test_book_features_are_the_expected_ones(pair):
    """Spot checks that make the comparison meaningful: ranks and relations are not all zero."""
    ours, _ = pair
    out = ours(tables.chapters(), tables.BOOK_QUERIES)
    types = out["token_type_ids"]
    ranks = types[..., TOKEN_TYPES.index("column_ranks")]
    relations = types[..., TOKEN_TYPES.index("numeric_relations")]
    assert ranks.max() == 6  # six distinct page numbers
    # "more than 20 pages": 20 < 36, 24, 46 (LT: 2), 20 > 10, 19, 3 (GT: 4).
    assert set(relations[3][relations[3] > 0].tolist()) == {2, 4}
    assert out["input_ids"][0, 0] == ours.vocab["[CLS]"]


@pytest.mark.parametrize(
    ("max_length", "padding"), [(48, True), (64, "max_length"), (100, True), (512, "max_length")]
)
def test_drop_rows_to_fit_matches_transformers(pair, max_length, padding):
    ours, theirs = pair
    table, queries = tables.long_table(), tables.QUERIES["long"]
    kwargs = {"truncation": "drop_rows_to_fit", "max_length": max_length, "padding": padding}
    out = ours(table, queries, **kwargs)
    tables.assert_same_encoding(out, _hf(theirs, table, queries, **kwargs))
    rows = out["token_type_ids"][..., TOKEN_TYPES.index("row_ids")].max(-1)
    assert (rows.max() < len(table)) == (max_length < 512)
    kept = ours(table, queries, return_num_rows=True, **kwargs)["num_rows"]
    assert np.array_equal(kept, rows)


def test_num_rows_counts_rows_without_tokens(pair):
    ours, _ = pair
    table = pd.concat(
        [tables.chapters(), pd.DataFrame([[""] * 5], columns=tables.chapters().columns)]
    )
    out = ours(table, "which chapter?", return_num_rows=True)
    assert out["num_rows"].tolist() == [7]
    assert out["token_type_ids"][0, :, TOKEN_TYPES.index("row_ids")].max() == 6


def test_cell_trim_length_and_question_limits_match_transformers(vocab_dir):
    settings = {"cell_trim_length": 3, "max_question_length": 8, "strip_column_names": True}
    theirs = transformers.TapasTokenizer(str(vocab_dir / "vocab.txt"), **settings)
    ours = TapasTokenizer.from_pretrained(vocab_dir, **settings)
    table, queries = tables.long_table(12), tables.QUERIES["long"]
    queries = [*queries, "Which city has a population of more than 1500 people in 1800?"]
    kwargs = {"truncation": True, "max_length": 128, "padding": True}
    with pytest.warns(UserWarning, match="max_question_length 8"):
        out = ours(table, queries, **kwargs)
    tables.assert_same_encoding(out, _hf(theirs, table, queries, **kwargs))


def test_answers_give_labels_and_numeric_values_as_transformers(pair):
    ours, theirs = pair
    table, queries = tables.numbers_table(), tables.QUERIES["numbers"]
    coordinates = [[(0, 0)], [(1, 2)], [(1, 4), (2, 4)], [(1, 1), (3, 1), (5, 1)]]
    texts = [[table.iat[c] for c in coords] for coords in coordinates]
    out = ours(table, queries, coordinates, texts, float_answer=[np.nan] * 3 + [9.0])
    expected = _hf(theirs, table, queries, answer_coordinates=coordinates, answer_text=texts)
    assert np.array_equal(out.pop("float_answer"), [np.nan, np.nan, np.nan, 9.0], equal_nan=True)
    tables.assert_same_encoding(out, expected)
    prev = out["token_type_ids"][..., TOKEN_TYPES.index("prev_labels")]
    types = out["token_type_ids"]
    assert [_cells(t, p) for t, p in zip(types, prev, strict=True)] == [
        set(),
        *map(set, coordinates[:-1]),
    ]
    assert [_cells(t, f) for t, f in zip(types, out["labels"], strict=True)] == [
        *map(set, coordinates)
    ]
    assert np.nanmax(out["numeric_values"]) == 1234.5
    assert out["numeric_values_scale"].max() > 1

    single = ours(table, queries[0], coordinates[0], texts[0])
    one = _hf(
        theirs, table, [queries[0]], answer_coordinates=coordinates[:1], answer_text=texts[:1]
    )
    tables.assert_same_encoding(single, one)


def _cells(types, flags):
    """The (row, column) cells whose tokens `flags` marks; types: `[length, 7]`."""
    return {
        (r - 1, c - 1) for (c, r), flag in zip(types[:, 1:3].tolist(), flags, strict=True) if flag
    }


def test_update_answer_coordinates_labels_the_first_matching_cell(vocab_dir):
    # transformers' implementation of this option fails (it reads `.piece` from str tokens).
    ours = TapasTokenizer.from_pretrained(vocab_dir, update_answer_coordinates=True)
    table = tables.chapters()
    out = ours(table, ["Which chapter starts on page 74?"], [[(9, 9)]], [["question answering"]])
    assert _cells(out["token_type_ids"][0], out["labels"][0]) == {(3, 1)}
    assert out["labels"].sum() == 2


def test_empty_cells_and_special_words_tokenize_as_transformers(pair):
    ours, theirs = pair
    texts = [
        "",
        " ",
        "n/a",
        "?",
        "nan",
        "-",
        "x [EMPTY] y",
        "x[EMPTY]y",
        "[cls] Café",
        "北京 1,234",
    ]
    for text in texts:
        assert ours.tokenize(text) == theirs.tokenize(text), text


def test_index_and_dtypes_do_not_matter(pair):
    """An integer index that is not 0..n-1, integer column names and pandas' string dtype
    (transformers fails on the first two) encode as the plain frame does."""
    ours, theirs = pair
    plain = tables.dates()
    expected = _hf(theirs, plain, tables.QUERIES["dates"], padding=True)
    shuffled = plain.set_axis([10, 30, 20, 0, 5, 7])
    tables.assert_same_encoding(ours(shuffled, tables.QUERIES["dates"]), expected)
    strings = plain.astype("string")
    tables.assert_same_encoding(ours(strings, tables.QUERIES["dates"]), expected)

    numbered = pd.DataFrame([[1, 2.5], [3, -4.0]])  # int column names, non-string cells
    with pytest.warns(UserWarning, match="not strings"):
        out = ours(numbered, "which is 3?")
    reference = _hf(theirs, numbered.astype(str).set_axis(["0", "1"], axis=1), ["which is 3?"])
    tables.assert_same_encoding(out, reference)


def test_errors(pair):
    ours, theirs = pair
    table = tables.long_table(3)
    long_question = "which city " * 30
    with pytest.raises(ValueError, match="max_length 32"):
        ours(table, long_question, truncation=True, max_length=32)
    with pytest.raises(ValueError, match="Could not encode"):
        theirs(table, long_question, truncation=True, max_length=32)
    with pytest.raises(ValueError, match="drop_rows_to_fit"):
        ours(tables.long_table(), "which city?", max_length=64)
    with pytest.raises(ValueError, match="both answer_coordinates and answer_text"):
        ours(table, "which city?", answer_coordinates=[(0, 0)])
    with pytest.raises(ValueError, match=r"answer cells \[\(7, 0\)\]"):
        ours(table, "which city?", [(7, 0)], ["x"])
    with pytest.raises(ValueError, match="DataFrame"):
        ours({"a": ["1"]}, "which?")
    with pytest.raises(ValueError, match="different lengths"):
        ours(table, ["a", "which city is it"], padding=False)
    with pytest.raises(ValueError, match="unknown truncation"):
        ours(table, "a", truncation="longest_first")


@pytest.fixture(scope="module")
def bert_vocab_dir(tmp_path_factory):
    """A BERT-style vocab.txt: the same words, no [EMPTY]."""
    directory = tmp_path_factory.mktemp("bert-vocab")
    vocab = tables.write_vocab(directory)
    words = vocab.read_text(encoding="utf-8").splitlines()
    vocab.write_text("".join(f"{w}\n" for w in words if w != "[EMPTY]"), encoding="utf-8")
    return directory


def empty_cells_table() -> pd.DataFrame:
    table = tables.numbers_table().astype(str)
    table.iat[0, 1], table.iat[1, 2], table.iat[2, 0] = "", "n/a", "?"
    table.iat[3, 3], table.iat[4, 1] = "[EMPTY]", "x[EMPTY]y."
    return table


def test_bert_vocabulary_gets_empty_as_an_added_token_like_transformers(bert_vocab_dir, tmp_path):
    theirs = transformers.TapasTokenizer(str(bert_vocab_dir / "vocab.txt"))
    ours = TapasTokenizer.from_pretrained(bert_vocab_dir)
    size = len((bert_vocab_dir / "vocab.txt").read_text(encoding="utf-8").splitlines())
    assert ours.added_tokens == {"[EMPTY]": size} == theirs.added_tokens_encoder
    assert len(ours) == len(theirs) == size + 1
    for text in ["n/a", "x [EMPTY] y", "x[EMPTY]y", "A [EMPTY].", "[EMPTY] ", "[cls] ?"]:
        assert ours.tokenize(text) == theirs.tokenize(text), text
    table, queries = empty_cells_table(), [*tables.QUERIES["numbers"], "is it [EMPTY]?"]
    out = ours(table, queries, padding=True)
    assert (out["input_ids"] == size).sum() >= 6  # the empty cells, the question's
    tables.assert_same_encoding(out, _hf(theirs, table, queries))

    # transformers' files read by ours, ours by transformers: added_tokens.json both ways.
    theirs.save_pretrained(tmp_path / "theirs")
    reloaded = TapasTokenizer.from_pretrained(tmp_path / "theirs")
    assert reloaded.added_tokens == ours.added_tokens
    tables.assert_same_encoding(reloaded(table, queries, padding=True), _hf(theirs, table, queries))
    ours.save_pretrained(tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "added_tokens.json").read_text())
    assert saved == {"[EMPTY]": size}
    again = transformers.TapasTokenizer.from_pretrained(tmp_path / "ours")
    tables.assert_same_encoding(out, _hf(again, table, queries))
    assert TapasTokenizer.from_pretrained(tmp_path / "ours").ids == ours.ids


def test_several_missing_special_tokens_are_numbered_as_transformers_numbers_them(bert_vocab_dir):
    settings = {"cls_token": "[BOS]", "empty_token": "[NONE]", "mask_token": "[EMPTY]"}
    theirs = transformers.TapasTokenizer(str(bert_vocab_dir / "vocab.txt"), **settings)
    ours = TapasTokenizer.from_pretrained(bert_vocab_dir, **settings)
    assert ours.added_tokens == theirs.added_tokens_encoder
    assert len(ours.added_tokens) == 3
    table, queries = empty_cells_table(), tables.QUERIES["numbers"]
    tables.assert_same_encoding(ours(table, queries, padding=True), _hf(theirs, table, queries))


def test_added_tokens_that_collide_with_the_vocabulary_are_refused(bert_vocab_dir):
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "a": 5}
    with pytest.raises(ValueError, match=r"added tokens \{'\[EMPTY\]': 5\} reuse ids"):
        TapasTokenizer(vocab, added_tokens={"[EMPTY]": 5})
    assert TapasTokenizer(vocab, added_tokens={"a": 5}).added_tokens == {"[EMPTY]": 6}
