"""Table question answering: a table (DataFrame or CSV file) and questions in, answers out."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from polyformer.models.inputs import check_vocabulary
from polyformer.models.tapas import decoding
from polyformer.models.tapas.config import TOKEN_TYPES
from polyformer.models.tapas.model import check_token_ids
from polyformer.models.tapas.tokenizer import TapasTokenizer, table_to_strings

if TYPE_CHECKING:
    import pandas as pd

LENGTH_BUCKET = 64


def read_table(table: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """`table` as a DataFrame of strings with a plain 0..n-1 index: a DataFrame (cells that are
    not strings converted, with a warning) or a CSV file read as text (empty cells stay empty)."""
    import pandas as pd  # a quarter of a second: only table QA needs it, not `import polyformer`

    if isinstance(table, str | os.PathLike):
        path = Path(table)
        if not path.is_file():
            raise FileNotFoundError(f"no table file {path}")
        try:
            table = pd.read_csv(path, dtype=str, keep_default_na=False)
        except pd.errors.EmptyDataError as error:
            raise ValueError(f"{path} holds no table: {error}") from error
    elif not isinstance(table, pd.DataFrame):
        raise ValueError(
            f"a table is a pandas DataFrame or a CSV file path, got {type(table).__name__}"
        )
    header, rows = table_to_strings(table)
    if not header or not rows:
        raise ValueError(
            f"the table is empty ({len(rows)} rows, {len(header)} columns); "
            "give at least one row and one column"
        )
    return pd.DataFrame(rows, columns=header, dtype=object)


@dataclasses.dataclass
class TableQuestionAnsweringPipeline:
    """Answers questions about a table with a TAPAS model, as transformers'
    TableQuestionAnsweringPipeline does.

    `pipe(table, "How many chapters have more than 20 pages?")` returns
    `{"answer": "COUNT > 1, 2, 3", "coordinates": [(1, 0), ...], "cells": [...],
    "aggregator": "COUNT", "result": 3.0}` ("aggregator" and "result" only for models with an
    aggregation head; see `decoding.Answer`); a list of such dicts for several questions.
    Rows that do not fit the model's input length are dropped from the bottom, with a warning.
    """

    model: Any
    tokenizer: TapasTokenizer

    @classmethod
    def from_model(cls, model: Any, directory: str | os.PathLike) -> TableQuestionAnsweringPipeline:
        """A loaded model with the vocab.txt of its checkpoint `directory`."""
        tokenizer = TapasTokenizer.from_pretrained(directory)
        check_vocabulary(len(tokenizer), model.config.vocab_size, directory)
        return cls(model, tokenizer)

    def __call__(
        self,
        table: pd.DataFrame | str | os.PathLike,
        queries: str | Sequence[str],
        *,
        sequential: bool = False,
        cell_classification_threshold: float = 0.5,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """Answer `queries` about `table`.

        sequential: for conversational (SQA) models, answer the questions in order, each seeing
          the cells the previous answer selected (the prev_labels token type).
        """
        table = read_table(table)
        single = isinstance(queries, str)
        queries = [queries] if single else queries
        if not isinstance(queries, Sequence) or not all(isinstance(q, str) for q in queries):
            raise ValueError(f"queries is a question or a list of them, got {queries!r}")
        if not queries or any(not q.strip() for q in queries):
            raise ValueError("give at least one non-empty question")
        self._check_question_lengths(queries)
        batch = self.tokenizer(
            table, queries, padding=True, truncation="drop_rows_to_fit", return_num_rows=True
        )
        num_rows = batch.pop("num_rows")
        if not num_rows.all():
            question = queries[int(np.argmin(num_rows))]
            raise ValueError(
                f"the question {question!r} leaves no room for a single table row in the model's "
                f"input of {self.tokenizer.model_max_length} tokens; shorten it"
            )
        # Under jit the model cannot refuse them; a row id past its rows would read NaN.
        check_token_ids(self.model.config, batch["input_ids"], batch["token_type_ids"])
        kept_rows = int(num_rows.min())
        if kept_rows < len(table):
            warnings.warn(
                f"the table has {len(table)} rows; only the first {kept_rows} fit the model's "
                f"input of {self.tokenizer.model_max_length} tokens with every question, the "
                "others cannot be in an answer",
                stacklevel=2,
            )
        if sequential:
            logits, logits_aggregation = self._sequential(batch, cell_classification_threshold)
        else:
            logits, logits_aggregation = self._forward(batch)
        config = self.model.config
        aggregates = bool(config.aggregation_labels) and bool(config.num_aggregation_labels)
        coordinates, aggregations = decoding.convert_logits_to_predictions(
            batch,
            logits,
            logits_aggregation if aggregates else None,
            cell_classification_threshold,
        )
        cells = table.to_numpy().tolist()
        answers = [
            decoding.answer(
                cells,
                coords,
                None if aggregations is None else aggregations[index],
                config.aggregation_labels if aggregates else None,
                config.no_aggregation_label_index,
            ).to_dict()
            for index, coords in enumerate(coordinates)
        ]
        return answers[0] if single else answers

    def _check_question_lengths(self, queries: list[str]) -> None:
        """transformers would encode a question beyond max_question_length as an empty one."""
        limit = self.tokenizer.max_question_length
        if limit is None:
            return
        for query in queries:
            length = len(self.tokenizer.tokenize(query))
            if length > limit:
                raise ValueError(
                    f"the question {query!r} has {length} tokens; this model takes at most {limit}"
                )

    def _forward(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits `[batch, length]` and aggregation logits; the model sees the inputs padded to
        a multiple of LENGTH_BUCKET so that tables of similar sizes share one compilation
        (padding is masked and belongs to no cell: it changes no answer)."""
        length = batch["input_ids"].shape[1]
        padding = ((0, 0), (0, -length % LENGTH_BUCKET))
        logits, aggregation = _logits(
            self.model,
            jnp.asarray(
                np.pad(batch["input_ids"], padding, constant_values=self.tokenizer.pad_token_id)
            ),
            jnp.asarray(np.pad(batch["attention_mask"], padding)),
            jnp.asarray(np.pad(batch["token_type_ids"], (*padding, (0, 0)))),
        )
        logits = np.asarray(logits)[:, :length]
        return logits, None if aggregation is None else np.asarray(aggregation)

    def _sequential(
        self, batch: dict[str, np.ndarray], threshold: float
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One question at a time; prev_labels marks the tokens of the cells the previous
        question's answer selected."""
        prev = TOKEN_TYPES.index("prev_labels")
        token_type_ids = batch["token_type_ids"].copy()
        logits, aggregations = [], []
        previous: dict[str, np.ndarray] = {}
        for index in range(len(token_type_ids)):
            example = {
                "input_ids": batch["input_ids"][index : index + 1],
                "attention_mask": batch["attention_mask"][index : index + 1],
                "token_type_ids": token_type_ids[index : index + 1],
            }
            if index > 0:
                (selected,), _ = decoding.convert_logits_to_predictions(
                    previous, logits[-1], None, threshold
                )
                selected = set(selected)
                types = example["token_type_ids"][0]
                types[:, prev] = [
                    int(segment == 1 and (row - 1, column - 1) in selected)
                    for segment, column, row in types[:, :3].tolist()
                ]
            example_logits, example_aggregation = self._forward(example)
            logits.append(example_logits)
            aggregations.append(example_aggregation)
            previous = example
        aggregation = None if aggregations[0] is None else np.concatenate(aggregations)
        return np.concatenate(logits), aggregation

    # `polyformer table-qa`: its help and the arguments after the checkpoint.
    COMMAND_HELP = "answer questions about a CSV table with a TAPAS checkpoint"
    CHECKPOINT_HELP = "a TAPAS checkpoint directory (with vocab.txt)"

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("table", help="a CSV file with a header row; cells are read as text")
        parser.add_argument("questions", nargs="+", help="one or more questions")
        parser.add_argument(
            "--sequential",
            action="store_true",
            help="conversational (SQA) models: each question sees the previous answer",
        )
        parser.add_argument("--json", action="store_true", help="one JSON object per answer")

    def run_command(self, args: argparse.Namespace) -> None:
        """Prints each question's answer."""
        answers = self(args.table, args.questions, sequential=args.sequential)
        for question, answer in zip(args.questions, answers, strict=True):
            if args.json:
                print(json.dumps({"question": question, **answer}))
            else:
                print(f"{question}\n  {decoding.Answer(**answer)}")


@nnx.jit
def _logits(model, input_ids, attention_mask, token_type_ids):
    """Compiled once per input shape: op-by-op execution of the TAPAS heads is much slower."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
    return out.logits, out.logits_aggregation
