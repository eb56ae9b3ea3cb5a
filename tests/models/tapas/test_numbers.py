"""Number and date parsing, column consolidation, ranks and relations."""

import pytest

from polyformer.models.tapas import numbers
from polyformer.models.tapas.numbers import Date, NumericValue, Relation

hf = pytest.importorskip("transformers.models.tapas.tokenization_tapas")

TEXTS = [
    "1,234.5",
    "-3.5 and +7",
    "from .5 to 12th",
    "the third of three",
    "March 1, 1999",
    "march 1, 2020",
    "sept 2008",
    "Sept 2008",
    "2001-07-04",
    "04.07.2001",
    "07-04-2001",
    "the 1990s",
    "1700 1699 2016 2017",
    "Monday, May 5",
    "5 May 2010 was a date",
    "nan inf 1e5 infinity",
    "n/a",
    "twelve twelfth thirteen",
    "1st 2nd 3rd 4th 21st",
    "",
    "a-1 b - 2",
]


def _as_tuples(spans):
    """Spans of either implementation as comparable tuples."""

    def value(v):
        date = None if v.date is None else (v.date.year, v.date.month, v.date.day)
        return v.float_value, date

    return [(s.begin_index, s.end_index, [value(v) for v in s.values]) for s in spans]


@pytest.mark.parametrize("text", TEXTS)
def test_parse_text_matches_transformers(text):
    normalized = numbers.normalize_for_match(text)
    assert normalized == hf.normalize_for_match(text)
    assert _as_tuples(numbers.parse_text(normalized)) == _as_tuples(hf.parse_text(normalized))
    assert _as_tuples(numbers.parse_text(text)) == _as_tuples(hf.parse_text(text))
    assert numbers.format_text(text) == hf.format_text(text)


def test_known_values():
    assert numbers.numeric_values("1,234.5") == [NumericValue(float_value=1234.5)]
    assert numbers.numeric_values("-3.5") == [NumericValue(float_value=-3.5)]
    assert numbers.numeric_values("March 1, 1999") == [NumericValue(date=Date(1999, 3, 1))]
    # Past 2016 a year is no date: "march 1" (no year) and 2020 are read instead.
    assert numbers.numeric_values("March 1, 2020") == [
        NumericValue(date=Date(None, 3, 1)),
        NumericValue(float_value=2020.0),
    ]
    assert numbers.parse_number("12th") == 12.0
    assert numbers.parse_number("inf") is None
    assert numbers.parse_date("1990s") == NumericValue(date=Date(1990))
    assert numbers.format_text(" ?? ") == numbers.EMPTY_TEXT
    assert numbers.to_float("1,000") == 1000.0
    assert numbers.to_float("3 to 4") is None
    assert numbers.to_float("May 2010") is None


def test_consolidation_ranks_and_relations():
    texts = ["10", "3", "n/a", "10", "x 7", "twelve"]
    column = numbers.table_numeric_values([texts])[0]
    assert {row: value.float_value for row, value in column.items()} == {
        0: 10.0, 1: 3.0, 3: 10.0, 4: 7.0, 5: 12.0,
    }  # fmt: skip
    # Ties share a rank; inverse ranks count from the largest.
    assert numbers.column_ranks(column) == {
        0: (3, 2), 1: (1, 4), 3: (3, 2), 4: (2, 3), 5: (4, 1),
    }  # fmt: skip
    # Question values 7 and 10: EQ 1, LT 2 (question < cell), GT 4.
    question = numbers.numeric_values("between 7 and 10")
    assert numbers.relation_bitmasks(question, column) == {0: 1 | 2, 1: 4, 3: 1 | 2, 4: 1 | 4, 5: 2}
    # Under 70% of the cells numeric: no values.
    assert numbers.table_numeric_values([["1", "a", "b", "2"]]) == [{}]
    # Dates and numbers tie: dates win; a question number is not comparable with them.
    mixed = numbers.table_numeric_values([["1999", "1990s", "2019", "May 2010"]])[0]
    assert all(value.date is not None for value in mixed.values()) and 2 not in mixed
    assert numbers.relation_bitmasks(numbers.numeric_values("5"), mixed) == {}
    # Dates compare on the fields all of them have (the year here).
    assert numbers.column_ranks(mixed) == {0: (2, 2), 1: (1, 3), 3: (3, 1)}


def test_consolidation_and_sort_keys_match_transformers():
    columns = [
        ["10", "3", "n/a", "10", "x 7", "twelve"],
        ["1999", "1990s", "2019", "May 2010"],
        ["March 1, 1999", "May 5, 2010", "Sept 2008", "June 1990"],
        ["1", "a", "b", "2"],
        ["May", "June 3", "april"],
    ]
    for texts in columns:
        ours = numbers.table_numeric_values([texts])[0]
        values = {
            i: list(hf._get_numeric_values(hf.normalize_for_match(t))) for i, t in enumerate(texts)
        }
        theirs = hf._consolidate_numeric_values(values, 0.7, None)
        assert _as_tuples([numbers.NumericValueSpan(0, 0, tuple(ours.values()))]) == _as_tuples(
            [hf.NumericValueSpan(0, 0, list(theirs.values()))]
        )
        assert list(ours) == list(theirs)
        if ours:
            key = numbers.numeric_sort_key_fn(list(ours.values()))
            their_key = hf.get_numeric_sort_key_fn(list(theirs.values()))
            assert [key(v) for v in ours.values()] == [their_key(v) for v in theirs.values()]


def test_relation_enum_values():
    # The numeric_relations feature is sum(2 ** (relation - EQ)).
    assert (Relation.EQ, Relation.LT, Relation.GT) == (7, 8, 9)
    key = numbers.numeric_sort_key_fn([NumericValue(1.0), NumericValue(2.0)])
    assert numbers.numeric_relation(NumericValue(1.0), NumericValue(2.0), key) is Relation.LT
    assert numbers.numeric_relation(NumericValue(2.0), NumericValue(2.0), key) is Relation.EQ
