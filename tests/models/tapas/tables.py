"""Test tables for the TAPAS tokenizer, decoding and pipeline, a WordPiece vocab covering them,
and the comparison with transformers' TapasTokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[EMPTY]"]

_NAMES = [
    "Introduction",
    "Text classification",
    "Named Entity Recognition",
    "Question Answering",
    "Summarization",
    "Conclusion",
]
_START, _END = [1, 12, 49, 74, 121, 141], [11, 48, 73, 120, 140, 144]


def chapters() -> pd.DataFrame:
    """The book's table of chapters (NLP with Transformers, chapter 11), all cells strings."""
    return pd.DataFrame(
        {
            "chapter": [str(i) for i in range(len(_NAMES))],
            "name": _NAMES,
            "start_page": [str(s) for s in _START],
            "end_page": [str(e) for e in _END],
            "number_of_pages": [str(e - s) for s, e in zip(_START, _END, strict=True)],
        }
    )


BOOK_QUERIES = [
    "What's the topic in chapter 4?",
    "What is the total number of pages?",
    "On which page does the chapter about question-answering start?",
    "How many chapters have more than 20 pages?",
]


def dates() -> pd.DataFrame:
    """Dates in several formats (and years past the parser's 2016 limit), a year column."""
    return pd.DataFrame(
        {
            "event": ["launch", "merger", "Sept crash", "recovery", "census", "vote"],
            "date": [
                "March 1, 1999", "May 5, 2010", "Sept 2008", "2001-07-04", "June 1990",
                "March 1, 2020",
            ],
            "year": ["1999", "2010", "2008", "2001", "1990s", "2019"],
            "month": ["March", "May", "September", "July", "n/a", "March"],
        }
    )  # fmt: skip


def numbers_table() -> pd.DataFrame:
    """Floats, negative and signed numbers, thousands separators, ordinals and number words, a
    text-only column, empty cells in every spelling, a mixed column under 70% numeric."""
    return pd.DataFrame(
        {
            "city": ["Zürich", "Café town", "北京", "x [EMPTY] y", "Oslo", "Lima", "Rome"],
            "population": ["1,234.5", "-3.5", "+7", ".5", "", "12th", "three"],
            "delta": ["-1", "-2.25", "n/a", "?", "nan", "-", "0"],
            "notes": ["first", "3rd of 4", "big 2 small", "none", "12", "a b c", "two"],
            "rank": ["1", "2", "2", "3", "5", "8", "13"],
        }
    )  # fmt: skip


def long_table(rows: int = 40) -> pd.DataFrame:
    """More rows than fit in a short max_length, with long cells to trim."""
    return pd.DataFrame(
        {
            "name": [f"city {i} of the named country" for i in range(rows)],
            "population": [str(1000 + 37 * i) for i in range(rows)],
            "founded": [str(1700 + 7 * i) for i in range(rows)],
        }
    )


def all_tables() -> dict[str, pd.DataFrame]:
    return {
        "chapters": chapters(),
        "dates": dates(),
        "numbers": numbers_table(),
        "long": long_table(),
    }


QUERIES = {
    "chapters": BOOK_QUERIES,
    "dates": [
        "What happened before March 2005?",
        "Which event was in 2008?",
        "what happened after the 1990s",
        "events on May 5, 2010 or in the third month",
    ],
    "numbers": [
        "Which city has a population over 1,000?",
        "Which delta is below -2?",
        "what is ranked second or 2nd, or under three?",
        "population of -3.5 or .5 and 12",
    ],
    "long": ["Which city has more than 1500 people?", "When was city 3 founded?"],
}

# Words split into word pieces instead of being whole-word entries, and words left out.
_PIECES = {
    "summarization": ["summar", "##ization"],
    "introduction": ["intro", "##duct", "##ion"],
    "recognition": ["recog", "##nition"],
    "classification": ["class", "##ification"],
    "population": ["pop", "##ulation"],
}
_UNKNOWN = {"北", "京", "conclusion", "oslo"}


def write_vocab(directory: Path) -> Path:
    """A vocab.txt for the tables and queries above: whole words, some split into pieces,
    digits as pieces so numbers are several tokens, a few words unknown."""
    from transformers.models.tapas.tokenization_tapas import BasicTokenizer

    basic = BasicTokenizer(do_lower_case=True)
    words = set()
    for name, table in all_tables().items():
        texts = [*table.columns, *table.to_numpy().ravel(), *QUERIES[name]]
        for text in texts:
            words.update(basic.tokenize(text))
    digits = [str(d) for d in range(10)]
    vocab = list(SPECIAL) + digits + [f"##{d}" for d in digits] + ["10", "20", "##ing", "##s"]
    for word in sorted(words):
        if word in _UNKNOWN or word in SPECIAL or word.isdigit():
            continue
        for piece in _PIECES.get(word, [word]):
            if piece not in vocab:
                vocab.append(piece)
    path = directory / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return path


def assert_same_encoding(ours: dict[str, np.ndarray], theirs) -> None:
    """Our tokenizer's output equals transformers' (return_tensors="np"), key by key."""
    theirs = {key: np.asarray(value) for key, value in theirs.items()}
    assert set(ours) == set(theirs), (sorted(ours), sorted(theirs))
    for key, value in ours.items():
        expected = theirs[key]
        assert value.shape == expected.shape, (key, value.shape, expected.shape)
        if value.dtype.kind == "f":
            assert np.array_equal(value, expected.astype(value.dtype), equal_nan=True), key
        else:
            assert np.array_equal(value, expected), (key, np.argwhere(value != expected)[:8])
