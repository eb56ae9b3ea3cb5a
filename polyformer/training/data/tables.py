"""The data config for table question answering: the embedded `table_questions` set for
TapasForQuestionAnswering.

`TableQuestionsData.load()` builds the TFDS set (polyformer.datasets.table_questions; built once
per configuration, then read from disk) and encodes each question on its own with its table (no
previous answer in prev_labels, as for WikiSQL), through a TapasTokenizer over a word-level
vocabulary of every word the set can hold, or over a BERT checkpoint's vocab.txt (`vocabulary`:
its WordPiece vocabulary, [EMPTY] added after it as transformers adds it), for a model that
starts from that checkpoint.
Batches: "input_ids", "attention_mask", "labels" int32 `[batch, max_length]`, "token_type_ids"
int32 `[batch, max_length, 7]` and "aggregation_labels" int32 `[batch]`: WikiSQL-supervised
TAPAS's strong supervision, as the "tapas" objective reads it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from polyformer.datasets import table_questions
from polyformer.datasets.embedded import named_config
from polyformer.datasets.table_questions import Question, TableQuestionsConfig, read_table
from polyformer.models.tapas.tokenizer import TapasTokenizer
from polyformer.training.data.arrays import ArrayData
from polyformer.training.data.sources import data_source

if TYPE_CHECKING:
    import pandas as pd

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[EMPTY]")
# What the objective reads; the tokenizer's numeric_values and float_answer stay out of the
# batches, so the loss is the strongly supervised one (cells and operator given).
BATCH_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels", "aggregation_labels")


@dataclasses.dataclass(frozen=True)
class TableQuestion:
    """One question of a split with its table's cells `[rows][columns]` and the gold answer
    cells, for scoring predicted answers."""

    cells: list[list[str]]
    question: Question

    @property
    def gold_cells(self) -> list[str]:
        return [self.cells[row][column] for row, column in self.question.coordinates]


def vocabulary() -> dict[str, int]:
    """TAPAS's special tokens, then every word of `table_questions.words()`."""
    words = dict.fromkeys([*SPECIAL_TOKENS, *table_questions.words()])
    return {word: index for index, word in enumerate(words)}


@dataclasses.dataclass(frozen=True)
class TableQuestionsData:
    """Questions about iris and wine tables for `TapasForQuestionAnswering`.

    Attributes:
      train_tables, validation_tables, dataset_seed, train_percent: the `TableQuestionsConfig`
        of the TFDS set (per source dataset; validation tables share no row with training).
      max_length: every input is padded to this many tokens; the model's
        max_position_embeddings is set to it.
      vocabulary: a checkpoint directory whose vocab.txt (tokenizer_config.json,
        added_tokens.json) the tokenizer reads, e.g. the BERT checkpoint of `FromBert`; None: a
        word-level vocabulary of every word the set can hold. The model's vocab_size is set to
        the tokenizer's size.
    """

    train_tables: int = 1000
    validation_tables: int = 40
    dataset_seed: int = 0
    train_percent: int = 70
    max_length: int = 112
    data_dir: str | None = None
    vocabulary: str | None = None

    def __post_init__(self):
        if self.train_tables < 1 or self.validation_tables < 1:
            raise ValueError(
                f"data.train_tables and data.validation_tables must be positive, got "
                f"{self.train_tables}, {self.validation_tables}"
            )
        if not 0 < self.train_percent < 100:
            raise ValueError(f"data.train_percent must be in 1..99, got {self.train_percent}")
        if self.max_length < 1:
            raise ValueError(f"data.max_length must be positive, got {self.max_length}")
        if self.vocabulary is not None and not (Path(self.vocabulary) / "vocab.txt").is_file():
            raise FileNotFoundError(
                f"data.vocabulary={self.vocabulary!r}: no vocab.txt there (a checkpoint directory "
                "with a WordPiece vocabulary is expected)"
            )

    def dataset_config(self) -> TableQuestionsConfig:
        values = {**vars(self), "seed": self.dataset_seed}
        prefix = f"t{self.train_tables}_v{self.validation_tables}"
        return named_config(TableQuestionsConfig, prefix, values)

    def tokenizer(self) -> TapasTokenizer:
        if self.vocabulary is None:
            return TapasTokenizer(vocabulary(), model_max_length=self.max_length)
        return TapasTokenizer.from_pretrained(self.vocabulary, model_max_length=self.max_length)

    def save(self, directory: str | os.PathLike) -> None:
        """Writes the tokenizer's files (vocab.txt, tokenizer_config.json, added_tokens.json),
        which TapasTokenizer.from_pretrained and transformers read."""
        self.tokenizer().save_pretrained(directory)

    def tables(self, split: str) -> list[tuple[pd.DataFrame, list[Question]]]:
        """The tables of `split`, each with its questions in their order."""
        source = data_source("table_questions", split, self.data_dir, config=self.dataset_config())
        out: list[tuple[pd.DataFrame, list[Question]]] = []
        last_id = None
        for i in range(len(source)):
            record = source[i]
            if record["table_id"] != last_id:
                out.append((read_table(record["table"]), []))
                last_id = record["table_id"]
            coordinates = [(int(r), int(c)) for r, c in record["answer_coordinates"]]
            text = record["question"].decode()
            answer = float(record["float_answer"])
            out[-1][1].append(Question(text, coordinates, int(record["aggregation"]), answer))
        return out

    def encode(self, split: str) -> tuple[dict[str, np.ndarray], list[TableQuestion]]:
        """Every question of `split` encoded with its table (the tokenizer's arrays and
        "aggregation_labels"), and, row for row, the question with its table's cells.

        Each question is encoded on its own, as WikiSQL's are: its prev_labels are zero. The
        questions about a table do not follow from each other as SQA's do, so the previous
        question's answer would be an unrelated input in training and, in the held-out inputs,
        gold answer cells (the same rows as the question's own for about 40% of the AVERAGE and
        COUNT questions)."""
        tokenizer = self.tokenizer()
        parts, questions = [], []
        for table, asked in self.tables(split):
            cells = table.to_numpy().tolist()
            for q in asked:
                row = TableQuestion(cells, q)
                encoded = tokenizer(
                    table,
                    q.text,
                    answer_coordinates=q.coordinates,
                    answer_text=row.gold_cells,
                    float_answer=q.float_answer,
                    padding="max_length",
                    max_length=self.max_length,
                )
                encoded["aggregation_labels"] = np.array([q.aggregation], np.int32)
                parts.append(encoded)
                questions.append(row)
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, questions

    def load(self) -> ArrayData:
        def batches(split: str) -> dict[str, np.ndarray]:
            arrays, _ = self.encode(split)
            return {key: arrays[key] for key in BATCH_KEYS}

        return ArrayData(
            batches("train"),
            batches("validation"),
            tokens_per_example=self.max_length,
            model_overrides={
                "vocab_size": len(self.tokenizer()),
                "max_position_embeddings": self.max_length,
            },
            saver=self.save,
        )
