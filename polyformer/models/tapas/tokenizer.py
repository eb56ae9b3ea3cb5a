"""TAPAS's table tokenizer: a question and a table flattened row by row into WordPiece tokens with
seven token-type channels. The same output as transformers' TapasTokenizer, with WordPiece run
by the `tokenizers` library."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tokenizers
from tokenizers import models, normalizers, pre_tokenizers

from polyformer.checkpoint_io import read_json
from polyformer.models.tapas import numbers
from polyformer.models.tapas.config import TOKEN_TYPES

if TYPE_CHECKING:
    import pandas as pd

VOCAB = "vocab.txt"
TOKENIZER_CONFIG = "tokenizer_config.json"
ADDED_TOKENS = "added_tokens.json"

# tokenizer_config.json keys this tokenizer takes, with transformers' defaults.
_CONFIG_DEFAULTS: dict[str, Any] = {
    "do_lower_case": True,
    "strip_accents": None,
    "tokenize_chinese_chars": True,
    "cell_trim_length": -1,
    "max_column_id": None,
    "max_row_id": None,
    "strip_column_names": False,
    "update_answer_coordinates": False,
    "min_question_length": None,
    "max_question_length": None,
    "model_max_length": 512,
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
    "empty_token": "[EMPTY]",
}


def table_to_strings(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """The header and the rows of `table` as strings, by position (any index, any dtypes).

    Cells that are not strings are converted with `str` and a warning (TAPAS reads text; missing
    values become "nan", which TAPAS writes as [EMPTY]).
    """
    import pandas as pd  # a quarter of a second: only table QA needs it, not `import polyformer`

    if not isinstance(table, pd.DataFrame):
        raise ValueError(f"the table must be a pandas DataFrame, got {type(table).__name__}")
    header = [str(name) for name in table.columns]
    rows = [list(row) for row in table.itertuples(index=False, name=None)]
    converted = sum(not isinstance(cell, str) for row in rows for cell in row)
    if converted or any(not isinstance(name, str) for name in table.columns):
        warnings.warn(
            f"the table has {converted} cells (or column names) that are not strings; they are "
            "converted with str() (pass table.astype(str) to choose the text yourself)",
            stacklevel=3,
        )
        rows = [[cell if isinstance(cell, str) else str(cell) for cell in row] for row in rows]
    return header, rows


def _added_tokens(
    vocab: Mapping[str, int], added: dict[str, int], specials: Sequence[str]
) -> dict[str, int]:
    """`added` (token -> id, as added_tokens.json holds them) less the tokens the vocabulary
    has, plus each special token found in neither, numbered on from the last id as
    transformers numbers them."""
    added = {token: index for token, index in added.items() if token not in vocab}
    taken = set(vocab.values()) | set(added.values())
    if len(taken) != len(vocab) + len(added):
        raise ValueError(f"added tokens {added} reuse ids of the vocabulary or of each other")
    for token in specials:
        if token not in vocab and token not in added:
            added[token] = len(vocab) + len(added)
    return added


@dataclasses.dataclass(frozen=True)
class _Table:
    """A tokenized table: one entry per token of the header and the cells, row-major."""

    tokens: list[str]
    row: np.ndarray  # [tokens] 0 for the header, data rows from 1
    column: np.ndarray  # [tokens] from 0
    word_begin: np.ndarray  # [tokens] index in its cell of the first piece of its word
    cells: list[list[list[str]]]  # [rows + 1][columns] word pieces, header first
    num_rows: int
    num_columns: int
    max_cell_tokens: int
    numeric: list[dict[int, numbers.NumericValue]]  # per column: data row -> value
    ranks: list[dict[int, tuple[int, int]]]  # per column: data row -> (rank, inverse rank)


class TapasTokenizer:
    """Table + questions -> TAPAS inputs, as transformers' TapasTokenizer computes them.

    `tokenizer(table, queries)` returns numpy arrays: `input_ids`, `attention_mask` `[batch,
    length]` and `token_type_ids` `[batch, length, 7]` (the channels of `TOKEN_TYPES`); with
    answers also `labels`, `numeric_values`, `numeric_values_scale` (and `float_answer` `[batch]`)
    for the loss. Build it with `from_pretrained(directory)` (vocab.txt, tokenizer_config.json,
    added_tokens.json).

    Special tokens missing from the vocabulary (a BERT vocabulary has no [EMPTY]) become added
    tokens as in transformers: ids from len(vocab) on, in the order unk, sep, pad, cls, mask,
    empty, after any `added_tokens` given; the text is split around added tokens wherever they
    occur before word pieces are looked for. `save_pretrained` writes them to added_tokens.json.
    """

    def __init__(
        self,
        vocab: dict[str, int],
        *,
        added_tokens: Mapping[str, int] | None = None,
        do_lower_case: bool = True,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
        cell_trim_length: int = -1,
        max_column_id: int | None = None,
        max_row_id: int | None = None,
        strip_column_names: bool = False,
        update_answer_coordinates: bool = False,
        min_question_length: int | None = None,
        max_question_length: int | None = None,
        model_max_length: int = 512,
        unk_token: str = "[UNK]",
        sep_token: str = "[SEP]",
        pad_token: str = "[PAD]",
        cls_token: str = "[CLS]",
        mask_token: str = "[MASK]",
        empty_token: str = "[EMPTY]",
    ):
        # What tokenizer_config.json holds: every argument but the vocabularies.
        self.settings = {k: v for k, v in locals().items() if k in _CONFIG_DEFAULTS}
        self.vocab = vocab
        specials = (unk_token, sep_token, pad_token, cls_token, mask_token, empty_token)
        self.added_tokens = _added_tokens(vocab, dict(added_tokens or {}), specials)
        self.ids = {**vocab, **self.added_tokens}
        self.special_tokens = frozenset(specials)
        self.unk_token, self.sep_token, self.pad_token = unk_token, sep_token, pad_token
        self.cls_token, self.mask_token, self.empty_token = cls_token, mask_token, empty_token
        self.pad_token_id = self.ids[pad_token]
        self.cell_trim_length = cell_trim_length
        self.max_column_id = model_max_length if max_column_id is None else max_column_id
        self.max_row_id = model_max_length if max_row_id is None else max_row_id
        self.strip_column_names = strip_column_names
        self.update_answer_coordinates = update_answer_coordinates
        self.min_question_length = min_question_length
        self.max_question_length = max_question_length
        self.model_max_length = model_max_length

        wordpiece = models.WordPiece(vocab, unk_token=unk_token, max_input_chars_per_word=100)
        self.tokenizer = tokenizers.Tokenizer(wordpiece)
        # BERT's BasicTokenizer cleans the text and composes it (NFC) before lower-casing and
        # stripping accents; BertNormalizer alone does not compose.
        self.tokenizer.normalizer = normalizers.Sequence(
            [
                normalizers.BertNormalizer(
                    clean_text=True,
                    handle_chinese_chars=tokenize_chinese_chars,
                    strip_accents=False,
                    lowercase=False,
                ),
                normalizers.NFC(),
                normalizers.BertNormalizer(
                    clean_text=False,
                    handle_chinese_chars=False,
                    strip_accents=do_lower_case if strip_accents is None else strip_accents,
                    lowercase=do_lower_case,
                ),
            ]
        )
        self.tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **overrides) -> TapasTokenizer:
        """From a checkpoint directory: vocab.txt, and tokenizer_config.json when present;
        `overrides` replace its values."""
        directory = Path(directory)
        vocab_file = directory / VOCAB
        if not vocab_file.is_file():
            raise FileNotFoundError(f"no {VOCAB} in {directory}")
        with open(vocab_file, encoding="utf-8") as file:
            vocab = {line.rstrip("\n"): index for index, line in enumerate(file)}
        settings = dict(_CONFIG_DEFAULTS)
        added = {}
        config_file = directory / TOKENIZER_CONFIG
        if config_file.is_file():
            config = read_json(directory, config_file.name)
            # transformers 5 lists added tokens here too, special tokens in the vocabulary among
            # them; only those outside it are added tokens.
            for index, token in config.get("added_tokens_decoder", {}).items():
                if token["content"] not in vocab:
                    added[token["content"]] = int(index)
            if not config.get("do_basic_tokenize", True):
                raise ValueError(f"{config_file}: do_basic_tokenize=false is not supported")
            for key in settings:
                value = config.get(key, settings[key])
                # Special tokens may be stored as serialized AddedTokens.
                settings[key] = value["content"] if isinstance(value, dict) else value
        added_file = directory / ADDED_TOKENS
        if added_file.is_file():
            added.update(read_json(directory, ADDED_TOKENS))
        settings.update(overrides)
        if settings["model_max_length"] is None or settings["model_max_length"] > 1e29:
            settings["model_max_length"] = _CONFIG_DEFAULTS["model_max_length"]
        return cls(vocab, added_tokens=added, **settings)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Writes vocab.txt, tokenizer_config.json and, when there are added tokens,
        added_tokens.json into `directory` (created if needed), as transformers does."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tokens = sorted(self.vocab, key=self.vocab.__getitem__)
        (directory / VOCAB).write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
        config = {**self.settings, "tokenizer_class": "TapasTokenizer"}
        (directory / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        if self.added_tokens:
            (directory / ADDED_TOKENS).write_text(json.dumps(self.added_tokens, indent=2) + "\n")

    def __len__(self) -> int:
        """The number of token ids, added tokens included (the embedding rows a model needs)."""
        return len(self.ids)

    # -- text -------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[str]:
        """Word pieces of one question or cell; an empty-looking text ("?", "n/a", "nan",
        punctuation only) is the single [EMPTY] token, the empty string no token at all."""
        return self._tokenize_many([text])[0]

    def _parts(self, text: str) -> list[list[str] | str]:
        """The tokens of `text` decided without WordPiece (special and added tokens, [EMPTY]),
        and between them the strings that WordPiece has to cut, in order."""
        parts: list[list[str] | str] = []
        for piece in self._split_added(text):
            if not piece:
                continue
            if piece in self.added_tokens:
                parts.append([piece])
            elif numbers.format_text(piece) == numbers.EMPTY_TEXT:
                parts.append([self.empty_token])
            elif any(token in piece for token in self.special_tokens):
                # transformers keeps a special token only as a whole whitespace-separated word.
                run: list[str] = []
                for word in [*piece.split(), None]:
                    if word is None or word in self.special_tokens:
                        if run:
                            parts.append(" ".join(run))
                            run = []
                        if word is not None:
                            parts.append([word])
                    else:
                        run.append(word)
            else:
                parts.append(piece)
        return parts

    def _split_added(self, text: str) -> list[str]:
        """`text` cut around every occurrence of an added token, as transformers' trie cuts it:
        the longest added token wins where several start at the same place."""
        if not self.added_tokens:
            return [text]
        alternatives = sorted(self.added_tokens, key=len, reverse=True)
        return re.split("(" + "|".join(map(re.escape, alternatives)) + ")", text)

    def _tokenize_many(self, texts: Sequence[str]) -> list[list[str]]:
        """`tokenize` for many texts, with one `tokenizers` batch call."""
        parts = [self._parts(text) for text in texts]
        strings = [part for text_parts in parts for part in text_parts if isinstance(part, str)]
        encodings = iter(self.tokenizer.encode_batch(strings, add_special_tokens=False))
        return [
            [
                token
                for part in text_parts
                for token in (next(encodings).tokens if isinstance(part, str) else part)
            ]
            for text_parts in parts
        ]

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        unk = self.ids[self.unk_token]
        return [self.ids.get(token, unk) for token in tokens]

    # -- table ------------------------------------------------------------------------------

    def _tokenize_table(self, header: list[str], rows: list[list[str]]) -> _Table:
        num_columns = len(header)
        texts = ([""] * num_columns if self.strip_column_names else list(header)) + [
            cell for row in rows for cell in row
        ]
        pieces = self._tokenize_many(texts)
        cells = [pieces[r * num_columns : (r + 1) * num_columns] for r in range(len(rows) + 1)]
        tokens, row_ids, column_ids, word_begin = [], [], [], []
        for r, row in enumerate(cells):
            for c, cell in enumerate(row):
                begin = 0
                for index, token in enumerate(cell):
                    if not token.startswith("##"):
                        begin = index
                    tokens.append(token)
                    row_ids.append(r)
                    column_ids.append(c)
                    word_begin.append(begin)
        columns = [[row[c] for row in rows] for c in range(num_columns)]
        numeric = numbers.table_numeric_values(columns)
        return _Table(
            tokens=tokens,
            row=np.asarray(row_ids, np.int64),
            column=np.asarray(column_ids, np.int64),
            word_begin=np.asarray(word_begin, np.int64),
            cells=cells,
            num_rows=len(rows),
            num_columns=num_columns,
            max_cell_tokens=max((len(cell) for row in cells for cell in row), default=0),
            numeric=numeric,
            ranks=[numbers.column_ranks(column) for column in numeric],
        )

    def _kept(self, table: _Table, num_rows: int, num_tokens: int) -> np.ndarray:
        """Mask over the table's tokens: the header and the first `num_rows` rows, each cell cut
        to the words that begin within its first `num_tokens` pieces."""
        return (table.row <= num_rows) & (table.word_begin < num_tokens)

    def _max_num_tokens(self, table: _Table, budget: int, num_rows: int) -> int | None:
        """Most pieces per cell that fit `budget` with `num_rows` rows, or None when the table
        does not fit (no piece at all, or less than cell_trim_length when that is set)."""
        max_num_tokens = table.max_cell_tokens
        if 0 <= self.cell_trim_length < max_num_tokens:
            max_num_tokens = self.cell_trim_length
        num_tokens = 0
        for num_tokens in range(max_num_tokens + 1):  # noqa: B007 - the loop's last value is used
            if self._kept(table, num_rows, num_tokens + 1).sum() > budget:
                break
        if num_tokens < max_num_tokens and (self.cell_trim_length >= 0 or num_tokens == 0):
            return None
        return num_tokens

    def _fit_rows(self, table: _Table, budget: int, num_rows: int) -> tuple[int, int]:
        """Drop rows from the bottom until the table fits `budget` tokens."""
        while True:
            num_tokens = self._max_num_tokens(table, budget, num_rows)
            if num_tokens is not None:
                break
            num_rows -= 1
            if num_rows < 1:
                break
        return num_rows, num_tokens or 1

    # -- encoding ---------------------------------------------------------------------------

    def __call__(
        self,
        table: pd.DataFrame,
        queries: str | Sequence[str],
        answer_coordinates: Sequence | None = None,
        answer_text: Sequence | None = None,
        float_answer: float | Sequence[float] | None = None,
        *,
        padding: bool | str = True,
        truncation: bool | str = False,
        max_length: int | None = None,
        return_num_rows: bool = False,
    ) -> dict[str, np.ndarray]:
        """Encode `queries` (one string or several) over `table`.

        Args:
          table: a DataFrame; cells that are not strings are converted (with a warning).
          answer_coordinates, answer_text: for training, per query a list of (row, column) cells
            (row 0 = first data row) and their texts (one list for a single query); both or none.
          float_answer: per query the scalar answer of an aggregation question (NaN if none).
          padding: True / "longest" pads to the longest query, "max_length" to `max_length`
            (default model_max_length), False / "do_not_pad" only when all have one length.
          truncation: "drop_rows_to_fit" / True drops rows from the bottom (and trims long
            cells) until the input fits `max_length`; False raises when it does not fit.
          max_length: default model_max_length.
          return_num_rows: add `num_rows` `[batch]`: how many data rows each input holds.

        Returns: numpy arrays `input_ids`, `attention_mask`, `labels` `[batch, length]` int32,
        `token_type_ids` `[batch, length, 7]` int32, `numeric_values`, `numeric_values_scale`
        `[batch, length]` float32, `float_answer` `[batch]` float32 (the last four with answers).
        """
        single = isinstance(queries, str)
        queries = [queries] if single else list(queries)
        if not queries or not all(isinstance(query, str) for query in queries):
            raise ValueError("queries must be a string or a non-empty list of strings")
        if (answer_coordinates is None) != (answer_text is None):
            raise ValueError("give both answer_coordinates and answer_text, or neither")
        if answer_coordinates is not None and single:
            answer_coordinates, answer_text = [answer_coordinates], [answer_text]
        if float_answer is not None:
            float_answer = [float_answer] if single else list(float_answer)
            if len(float_answer) != len(queries):
                raise ValueError(f"{len(float_answer)} float_answer for {len(queries)} queries")
        if answer_coordinates is not None and not (
            len(answer_coordinates) == len(answer_text) == len(queries)
        ):
            raise ValueError(
                f"{len(answer_coordinates)} answer_coordinates and {len(answer_text)} answer_text "
                f"for {len(queries)} queries"
            )
        truncate = _truncation(truncation)
        max_length = self.model_max_length if max_length is None else max_length

        header, rows = table_to_strings(table)
        if len(header) >= self.max_column_id:
            raise ValueError(
                f"the table has {len(header)} columns; at most {self.max_column_id - 1} fit"
            )
        num_rows = len(rows)
        if num_rows >= self.max_row_id:
            if not truncate:
                raise ValueError(
                    f"the table has {num_rows} rows; at most {self.max_row_id - 1} fit "
                    "(truncation='drop_rows_to_fit' keeps the first ones)"
                )
            num_rows = self.max_row_id - 1
        tokenized = self._tokenize_table(header, rows)

        answers = (
            [None] * len(queries)
            if answer_coordinates is None
            else list(zip(answer_coordinates, answer_text, strict=True))
        )
        examples, kept_rows = [], []
        for index, query in enumerate(queries):
            query, query_tokens = self._question(query)
            previous = answers[index - 1] if index > 0 else None
            example, rows = self._encode_one(
                tokenized, num_rows, query, query_tokens, truncate, max_length,
                answers[index], previous,
            )  # fmt: skip
            examples.append(example)
            kept_rows.append(rows)
        batch = _pad(examples, padding, max_length, self.pad_token_id)
        if float_answer is not None:
            batch["float_answer"] = np.asarray(float_answer, np.float32)
        if return_num_rows:
            batch["num_rows"] = np.asarray(kept_rows, np.int32)
        return batch

    def _question(self, query: str) -> tuple[str, list[str]]:
        """The question and its tokens; ("", []) when it is outside the question length limits
        (a skipped question has no numbers either)."""
        tokens = self.tokenize(query)
        for limit, too in ((self.max_question_length, "longer"), (self.min_question_length, "")):
            if limit is None:
                continue
            if (len(tokens) > limit) if too else (len(tokens) < limit):
                warnings.warn(
                    f"the question {query!r} has {len(tokens)} tokens, "
                    f"{'more' if too else 'fewer'} than the {'max' if too else 'min'}_question_"
                    f"length {limit}: it is encoded as an empty question (as transformers does)",
                    stacklevel=4,
                )
                return "", []
        return query, tokens

    def _encode_one(
        self,
        table: _Table,
        num_rows: int,
        query: str,
        query_tokens: list[str],
        truncate: bool,
        max_length: int,
        answer: tuple[Sequence[tuple[int, int]], Sequence[str]] | None,
        previous_answer: tuple[Sequence[tuple[int, int]], Sequence[str]] | None,
    ) -> tuple[dict[str, np.ndarray], int]:
        """One question's arrays, unpadded, and how many data rows they hold; `answer` and the
        previous question's answer (for prev_labels) are (coordinates, texts) or None."""
        num_tokens = table.max_cell_tokens
        if truncate:
            budget = max_length - len(query_tokens) - 2  # [CLS] and [SEP]
            num_rows, num_tokens = self._fit_rows(table, budget, num_rows)
        kept = np.flatnonzero(self._kept(table, num_rows, num_tokens))
        length = len(query_tokens) + 2 + len(kept)
        if length > max_length:
            what = "the question and the table header" if truncate else "the question and table"
            raise ValueError(
                f"{what} take {length} tokens, more than max_length {max_length}"
                + ("" if truncate else " (truncation='drop_rows_to_fit' drops rows to fit)")
            )
        question_length = len(query_tokens) + 2
        input_ids = self.convert_tokens_to_ids(
            [self.cls_token, *query_tokens, self.sep_token, *(table.tokens[i] for i in kept)]
        )
        token_types = np.zeros((length, len(TOKEN_TYPES)), np.int32)
        token_types[question_length:, 0] = 1
        columns = table.column[kept]
        rows = table.row[kept]  # 0: header
        token_types[question_length:, 1] = columns + 1
        token_types[question_length:, 2] = rows
        # cell[(column, data row)] -> positions of its tokens in the sequence
        cell_positions: dict[tuple[int, int], list[int]] = {}
        for position, column, row in zip(
            range(question_length, length), columns.tolist(), rows.tolist(), strict=True
        ):
            if row > 0:
                cell_positions.setdefault((column, row - 1), []).append(position)

        question_values = numbers.numeric_values(query)
        for column in range(table.num_columns):
            for row, (rank, inverse) in table.ranks[column].items():
                positions = cell_positions.get((column, row), [])
                token_types[positions, 4] = rank
                token_types[positions, 5] = inverse
            relations = numbers.relation_bitmasks(question_values, table.numeric[column])
            for row, bitmask in relations.items():
                token_types[cell_positions.get((column, row), []), 6] = bitmask

        example = {
            "input_ids": np.asarray(input_ids, np.int32),
            "attention_mask": np.ones(length, np.int32),
            "token_type_ids": token_types,
        }
        if previous_answer is not None:
            token_types[:, 3] = self._answer_ids(table, cell_positions, length, *previous_answer)
        if answer is not None:
            example["labels"] = self._answer_ids(table, cell_positions, length, *answer)
            values = np.full(length, np.nan, np.float32)
            scale = np.ones(length, np.float32)
            for (column, row), positions in cell_positions.items():
                value = table.numeric[column].get(row)
                if value is not None and value.float_value not in (None, math.inf):
                    values[positions] = value.float_value
                if len(positions) > 1:
                    scale[positions] = len(positions)
            example["numeric_values"] = values
            example["numeric_values_scale"] = scale
        return example, num_rows

    def _answer_ids(
        self,
        table: _Table,
        cell_positions: dict[tuple[int, int], list[int]],
        length: int,
        coordinates: Sequence[tuple[int, int]],
        texts: Sequence[str],
    ) -> np.ndarray:
        """1 on the tokens of the answer cells `coordinates` ((row, column), row 0 = first data
        row), or, with update_answer_coordinates, on the first occurrence of each answer text."""
        labels = np.zeros(length, np.int32)
        if self.update_answer_coordinates:
            for text in texts:
                self._label_answer_text(table, cell_positions, labels, self.tokenize(text))
            return labels
        missing = []
        for row, column in coordinates:
            positions = cell_positions.get((column, row))
            if positions is None:
                missing.append((row, column))
            else:
                labels[positions] = 1
        if missing:
            raise ValueError(
                f"answer cells {missing} (row, column) are not in the encoded table "
                "(out of range, or rows dropped to fit max_length)"
            )
        return labels

    @staticmethod
    def _label_answer_text(table: _Table, cell_positions, labels: np.ndarray, answer: list[str]):
        """Label the first cell (row-major, header excluded) whose pieces contain `answer`."""
        for row, cells in enumerate(table.cells[1:]):
            for column, cell in enumerate(cells):
                start = next(
                    (
                        i
                        for i in range(len(cell) - len(answer) + 1)
                        if cell[i : i + len(answer)] == answer
                    ),
                    None,
                )
                if start is None:
                    continue
                positions = cell_positions.get((column, row), [])
                chosen = positions[start : start + len(answer)] if positions else []
                if len(chosen) == len(answer):
                    labels[chosen] = 1
                    return


def _truncation(truncation: bool | str) -> bool:
    if truncation in (True, "drop_rows_to_fit"):
        return True
    if truncation in (False, "do_not_truncate"):
        return False
    raise ValueError(
        f"unknown truncation {truncation!r}: use 'drop_rows_to_fit' (True) or 'do_not_truncate'"
    )


_PAD_VALUES = {
    "input_ids": None,
    "attention_mask": 0,
    "token_type_ids": 0,
    "labels": 0,
    "numeric_values": np.nan,
    "numeric_values_scale": 1.0,
}


def _pad(
    examples: list[dict[str, np.ndarray]], padding: bool | str, max_length: int, pad_id: int
) -> dict[str, np.ndarray]:
    """Stack examples, right-padded as `padding` says."""
    lengths = [len(example["input_ids"]) for example in examples]
    if padding in (True, "longest"):
        target = max(lengths)
    elif padding == "max_length":
        target = max_length
    elif padding in (False, "do_not_pad"):
        if len(set(lengths)) > 1:
            raise ValueError(f"queries encode to different lengths {lengths}: pass padding=True")
        target = lengths[0]
    else:
        raise ValueError(f"unknown padding {padding!r}: use True/'longest', 'max_length' or False")
    batch = {}
    for key, pad_value in _PAD_VALUES.items():
        if key not in examples[0]:
            continue
        pad_value = pad_id if pad_value is None else pad_value
        first = examples[0][key]
        out = np.full((len(examples), target, *first.shape[1:]), pad_value, first.dtype)
        for index, example in enumerate(examples):
            out[index, : len(example[key])] = example[key]
        batch[key] = out
    return batch
