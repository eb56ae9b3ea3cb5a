"""Numbers and dates in table cells and questions: what TAPAS's rank and relation features see.

A port of the original TAPAS `number_utils.py` / `number_annotation_utils.py` (as transformers'
`tokenization_tapas.py` carries them), working on plain lists of cell texts instead of DataFrames
of mutable Cell objects, so that row positions, not index labels, identify a row.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import enum
import math
import re
from collections.abc import Callable, Iterator, Sequence


class Relation(enum.IntEnum):
    """How a question value compares with a cell value (the original's constants.Relation)."""

    EQ = 7
    LT = 8  # the question value is less than the cell value
    GT = 9


@dataclasses.dataclass(frozen=True)
class Date:
    year: int | None = None
    month: int | None = None
    day: int | None = None


@dataclasses.dataclass(frozen=True)
class NumericValue:
    """A number (`float_value`) or a possibly partial date (`date`); exactly one is set."""

    float_value: float | None = None
    date: Date | None = None


@dataclasses.dataclass(frozen=True)
class NumericValueSpan:
    """Character span `[begin, end)` of a text and the values it parses to."""

    begin_index: int
    end_index: int
    values: tuple[NumericValue, ...]


SortKey = Callable[[NumericValue], "float | tuple[float, ...]"]

# Which of (year, month, day) a strptime pattern fills.
_YEAR, _YEAR_MONTH, _YEAR_MONTH_DAY = (True, False, False), (True, True, False), (True, True, True)
_MONTH, _MONTH_DAY = (False, True, False), (False, True, True)

# The original's order matters: the first pattern that parses wins (duplicates kept as there).
_DATE_PATTERNS = (
    ("%B", _MONTH),
    ("%Y", _YEAR),
    ("%Ys", _YEAR),
    ("%b %Y", _YEAR_MONTH),
    ("%B %Y", _YEAR_MONTH),
    ("%B %d", _MONTH_DAY),
    ("%b %d", _MONTH_DAY),
    ("%d %b", _MONTH_DAY),
    ("%d %B", _MONTH_DAY),
    ("%B %d, %Y", _YEAR_MONTH_DAY),
    ("%d %B %Y", _YEAR_MONTH_DAY),
    ("%m-%d-%Y", _YEAR_MONTH_DAY),
    ("%Y-%m-%d", _YEAR_MONTH_DAY),
    ("%Y-%m", _YEAR_MONTH),
    ("%B %Y", _YEAR_MONTH),
    ("%d %b %Y", _YEAR_MONTH_DAY),
    ("%Y-%m-%d", _YEAR_MONTH_DAY),
    ("%b %d, %Y", _YEAR_MONTH_DAY),
    ("%d.%m.%Y", _YEAR_MONTH_DAY),
    ("%A, %b %d", _MONTH_DAY),
    ("%A, %B %d", _MONTH_DAY),
)

_FIELD_TO_REGEX = (
    ("%A", r"\w+"),
    ("%B", r"\w+"),
    ("%Y", r"\d{4}"),
    ("%b", r"\w{3}"),
    ("%d", r"\d{1,2}"),
    ("%m", r"\d{1,2}"),
)


def _date_prefilter(pattern: str) -> re.Pattern:
    """A regex that a text must match before strptime is tried (strptime is slow and lenient)."""
    regex = pattern.replace(".", re.escape(".")).replace("-", re.escape("-")).replace(" ", r"\s+")
    for field, field_regex in _FIELD_TO_REGEX:
        regex = regex.replace(field, field_regex)
    return re.compile("^" + regex + "$")


_PROCESSED_DATE_PATTERNS = tuple(
    (pattern, mask, _date_prefilter(pattern)) for pattern, mask in _DATE_PATTERNS
)
_MAX_DATE_NGRAM_SIZE = 5
# Following DynSp (Microsoft/DynSP util.py): years outside this range are not dates.
_MIN_YEAR, _MAX_YEAR = 1700, 2016

_NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
]
_ORDINAL_WORDS = [
    "zeroth",
    "first",
    "second",
    "third",
    "fourth",
    "fifth",
    "sixth",
    "seventh",
    "eighth",
    "ninth",
    "tenth",
    "eleventh",
    "twelfth",
]
_ORDINAL_SUFFIXES = ("st", "nd", "rd", "th")
_NUMBER_PATTERN = re.compile(r"((^|\s)[+-])?((\.\d+)|(\d+(,\d\d\d)*(\.\d*)?))")

EMPTY_TEXT = "EMPTY"


def normalize_for_match(text: str) -> str:
    """Lower-cased, whitespace collapsed: the form numbers are parsed from."""
    return " ".join(text.lower().split())


def format_text(text: str) -> str:
    """Lower-cased words without punctuation, or `EMPTY_TEXT` for an empty-looking cell ("", "?",
    "n/a", "nan", punctuation only): TAPAS writes such cells as the [EMPTY] token."""
    text = text.lower().strip()
    if text in ("n/a", "?", "nan"):
        text = EMPTY_TEXT
    text = " ".join(re.sub(r"[^\w\d]+", " ", text).replace("_", " ").split())
    return text or EMPTY_TEXT


def parse_date(text: str) -> NumericValue | None:
    """The date `text` spells in one of the known patterns ("March 1, 1999", "1990s",
    "2010-05-04", "May"), with only the fields the pattern names; None if none fits or the year
    is outside 1700-2016."""
    text = re.sub(r"Sept\b", "Sep", text)
    for pattern, (has_year, has_month, has_day), regex in _PROCESSED_DATE_PATTERNS:
        if not regex.match(text):
            continue
        try:
            date = datetime.datetime.strptime(text, pattern).date()
        except ValueError:
            continue
        if not _MIN_YEAR <= date.year <= _MAX_YEAR:
            continue
        return NumericValue(
            date=Date(
                year=date.year if has_year else None,
                month=date.month if has_month else None,
                day=date.day if has_day else None,
            )
        )
    return None


def parse_number(text: str) -> float | None:
    """A cardinal or ordinal number ("1,234.5", "3rd", " -2"); None for anything else, NaN or
    infinity."""
    for suffix in _ORDINAL_SUFFIXES:
        if text.endswith(suffix):
            text = text[: -len(suffix)]
            break
    try:
        value = float(text.replace(",", ""))
    except ValueError:
        return None
    if math.isnan(value) or value == math.inf:
        return None
    return value


def all_spans(text: str, max_ngram_length: int) -> Iterator[tuple[int, int]]:
    """Every span of 1 to `max_ngram_length` consecutive alphanumeric words, as (begin, end)."""
    start_indexes: list[int] = []
    for index, char in enumerate(text):
        if not char.isalnum():
            continue
        if index == 0 or not text[index - 1].isalnum():
            start_indexes.append(index)
        if index + 1 == len(text) or not text[index + 1].isalnum():
            for start_index in start_indexes[-max_ngram_length:]:
                yield start_index, index + 1


def parse_text(text: str) -> list[NumericValueSpan]:
    """The number and date spans of `text`, longest first among overlapping ones, in text order.

    Numbers come from a number pattern (signs, thousands separators, decimals), from single words
    ("3rd", "twelve", "first"); dates from n-grams of up to five words.
    """
    span_values: dict[tuple[int, int], list[NumericValue]] = collections.defaultdict(list)
    for match in _NUMBER_PATTERN.finditer(text):
        number = parse_number(match.group())
        if number is not None:
            span_values[match.span()].append(NumericValue(float_value=number))

    for begin, end in all_spans(text, max_ngram_length=1):
        if (begin, end) in span_values:
            continue
        word = text[begin:end]
        number = parse_number(word)
        if number is not None:
            span_values[begin, end].append(NumericValue(float_value=number))
        for words in (_NUMBER_WORDS, _ORDINAL_WORDS):
            if word in words:
                span_values[begin, end].append(NumericValue(float_value=float(words.index(word))))

    for begin, end in all_spans(text, max_ngram_length=_MAX_DATE_NGRAM_SIZE):
        date = parse_date(text[begin:end])
        if date is not None:
            span_values[begin, end].append(date)

    longest_first = sorted(span_values.items(), key=lambda kv: (kv[0][1] - kv[0][0], -kv[0][0]))
    selected: list[tuple[tuple[int, int], list[NumericValue]]] = []
    for span, values in reversed(longest_first):
        if not any(kept[0] <= span[0] and span[1] <= kept[1] for kept, _ in selected):
            selected.append((span, values))
    selected.sort(key=lambda kv: kv[0][0])
    return [NumericValueSpan(begin, end, tuple(values)) for (begin, end), values in selected]


def numeric_values(text: str) -> list[NumericValue]:
    """Every value of every span of `text` after `normalize_for_match`, in order."""
    return [value for span in parse_text(normalize_for_match(text)) for value in span.values]


def _value_type(value: NumericValue) -> str:
    return "number" if value.float_value is not None else "date"


def _primitive(value: NumericValue) -> float | tuple[float | None, ...]:
    if value.float_value is not None:
        return value.float_value
    date = value.date
    return tuple(
        None if field is None else float(field) for field in (date.year, date.month, date.day)
    )


def numeric_sort_key_fn(values: Sequence[NumericValue]) -> SortKey:
    """A key that makes `values` comparable: the float, or the date fields that every value has
    ("May 2010" and "2009" compare by year only). ValueError when numbers and dates mix or the
    dates share no field."""
    types = {_value_type(value) for value in values}
    if len(types) != 1:
        raise ValueError(f"no common value type in {values}")
    if types == {"number"}:
        return _primitive
    fields = [
        index for index in range(3) if all(_primitive(value)[index] is not None for value in values)
    ]
    if not fields:
        raise ValueError(f"no common date field in {values}")
    return lambda value: tuple(_primitive(value)[index] for index in fields)


def consolidate_column(
    row_values: Sequence[Sequence[NumericValue]], min_consolidation_fraction: float = 0.7
) -> dict[int, NumericValue]:
    """Row position -> the value a column holds there, when the column is numeric.

    The column's type is the one (number or date) most of its cells contain, dates winning ties;
    it must be present in at least `min_consolidation_fraction` of the cells (empty ones count),
    else the column has no values. A row gets the first value of that type in its cell.
    """
    type_counts = collections.Counter(
        kind for values in row_values for kind in {_value_type(value) for value in values}
    )
    if not type_counts:
        return {}
    max_count = max(type_counts.values())
    if max_count < len(row_values) * min_consolidation_fraction:
        return {}
    winners = {kind for kind, count in type_counts.items() if count == max_count}
    kind = "date" if "date" in winners else "number"
    column = {}
    for row, values in enumerate(row_values):
        for value in values:
            if _value_type(value) == kind:
                column[row] = value
                break
    return column


def table_numeric_values(
    columns: Sequence[Sequence[str]], min_consolidation_fraction: float = 0.7
) -> list[dict[int, NumericValue]]:
    """For each column (a list of its cell texts, data rows only), row -> consolidated value."""
    return [
        consolidate_column([numeric_values(cell) for cell in cells], min_consolidation_fraction)
        for cells in columns
    ]


def numeric_relation(value: NumericValue, other: NumericValue, key: SortKey) -> Relation | None:
    """How `value` compares with `other` under `key`; None when they are incomparable."""
    value, other = key(value), key(other)
    if value == other:
        return Relation.EQ
    if value < other:
        return Relation.LT
    if value > other:
        return Relation.GT
    return None


def column_ranks(column: dict[int, NumericValue]) -> dict[int, tuple[int, int]]:
    """Row -> (rank, inverse rank) of its value among the column's distinct values: the smallest
    has rank 1, the largest inverse rank 1. Empty when the values are not comparable."""
    if not column:
        return {}
    try:
        key = numeric_sort_key_fn(list(column.values()))
    except ValueError:
        return {}
    keys = {row: key(value) for row, value in column.items()}
    unique = sorted(set(keys.values()))
    rank = {value: index for index, value in enumerate(unique)}
    return {row: (rank[k] + 1, len(unique) - rank[k]) for row, k in keys.items()}


def relation_bitmasks(
    question_values: Sequence[NumericValue], column: dict[int, NumericValue]
) -> dict[int, int]:
    """Row -> bitmask of the relations between the question's values and the row's value:
    EQ -> 1, LT -> 2, GT -> 4 (TAPAS's numeric_relations feature). Rows without any relation are
    left out."""
    relations: dict[int, set[Relation]] = collections.defaultdict(set)
    if not column:
        return {}
    for value in question_values:
        try:
            key = numeric_sort_key_fn([*column.values(), value])
        except ValueError:
            continue
        for row, cell_value in column.items():
            relation = numeric_relation(value, cell_value, key)
            if relation is not None:
                relations[row].add(relation)
    return {
        row: sum(2 ** (relation - Relation.EQ) for relation in found)
        for row, found in relations.items()
    }


def to_float(text: str) -> float | None:
    """The single number a cell holds ("1,234", "-3.5", "12th"), for computing aggregations;
    None when the cell has no number, several, or a date."""
    values = numeric_values(text)
    if len(values) == 1 and values[0].float_value is not None:
        return values[0].float_value
    return None
