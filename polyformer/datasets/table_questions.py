"""Questions about small tables cut from scikit-learn's iris and wine measurements, with TAPAS's
strong supervision (answer cells and aggregation operator): nothing is downloaded.

Each table (a pandas DataFrame, every cell a string as TAPAS reads them) has 4-6 rows: a `name`
column (a distinct name per row from a fixed set of 60 Python standard-library module names,
`sys.stdlib_module_names`), a category column (iris species; wine cultivars relabelled
alpha/beta/gamma) and two or three measurement columns. Each dataset's rows are split once into
`train_percent` for training tables and the rest for validation tables, so validation tables
share no row with training.

Questions, five or four per table, in this order; each stands alone (as WikiSQL's do, unlike
SQA's follow-up questions), so TAPAS encodes none with another's answer in its `prev_labels`:
* lookup (NONE): "what is the {column} of {name}?", "which name has {column} {value}?" (the
  value unique in its column; asked only when there is one);
* SUM / AVERAGE: "what is the total / average {column} of {category}?" over the rows of that
  category;
* COUNT: "how many rows are {category}?" (the answer cells: the category cells of those rows).

One generator seeded with `seed` draws the row split, then the training tables, then the
validation ones: a config's records are the same on every run and machine.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import tensorflow_datasets as tfds

from polyformer.datasets.embedded import EmbeddedBuilder

if TYPE_CHECKING:
    import pandas as pd

AGGREGATIONS = ("NONE", "SUM", "AVERAGE", "COUNT")
TEMPLATE_WORDS = ("what", "is", "the", "of", "which", "name", "has", "total", "average", "how",
                  "many", "rows", "are", "?")  # fmt: skip
# The numbers a question or cell can hold, as whole words of the tables' vocabulary.
NUMBER_WORDS = tuple(str(i) for i in range(2000)) + tuple(f"{i:02d}" for i in range(10))


@dataclasses.dataclass(frozen=True)
class Source:
    """One scikit-learn dataset as table material: measurement columns and a category per row."""

    columns: dict[str, np.ndarray]  # column name -> values as cell strings
    category_column: str
    categories: np.ndarray  # per row


def sources() -> list[Source]:
    """Iris (four measurements, species) and wine (four of its measurements, cultivar)."""
    from sklearn.datasets import load_iris, load_wine

    iris = load_iris()
    iris_columns = ("sepal length", "sepal width", "petal length", "petal width")
    wine = load_wine()
    picked = {"alcohol": "alcohol", "magnesium": "magnesium", "hue": "hue", "proline": "proline"}
    features = list(wine.feature_names)

    def cells(values: np.ndarray) -> np.ndarray:
        return np.array([f"{v:g}" for v in values])

    return [
        Source(
            {name: cells(iris.data[:, i]) for i, name in enumerate(iris_columns)},
            "species",
            np.asarray(iris.target_names)[iris.target],
        ),
        Source(
            {ours: cells(wine.data[:, features.index(f)]) for f, ours in picked.items()},
            "cultivar",
            np.array(["alpha", "beta", "gamma"])[wine.target],
        ),
    ]


def module_names(count: int = 60) -> list[str]:
    """`count` standard-library module names (a fixed choice): few enough that each one occurs
    in many training questions, as a model trained from scratch needs to learn to match it."""
    names = sorted(
        n for n in sys.stdlib_module_names if n.isalpha() and n.islower() and len(n) < 11
    )
    return sorted(np.random.default_rng(0).choice(names, size=count, replace=False).tolist())


def words() -> list[str]:
    """Every word a table or question can hold, once each, in a fixed order: what a word-level
    vocabulary for this set needs."""
    out = [*TEMPLATE_WORDS, *module_names(), ".", "-"]
    for source in sources():
        out += [w for column in source.columns for w in column.split()]
        out += source.category_column.split() + sorted(set(source.categories))
    return list(dict.fromkeys([*out, *NUMBER_WORDS]))


@dataclasses.dataclass(frozen=True)
class Question:
    """A question, its answer cells (row, column) of the table, its operator (an index into
    AGGREGATIONS) and, for SUM, AVERAGE and COUNT, the number it answers (NaN for lookups)."""

    text: str
    coordinates: list[tuple[int, int]]
    aggregation: int
    float_answer: float


def make_table(
    source: Source, rows: np.ndarray, names: list[str], rng: np.random.Generator
) -> pd.DataFrame:
    """4-6 of `rows` of `source` with a name each and 2-3 of its measurement columns."""
    import pandas as pd  # a quarter of a second: only table data needs it, not every run

    count = int(rng.integers(4, 7))
    chosen = rng.choice(rows, size=count, replace=False)
    measure = rng.choice(list(source.columns), size=int(rng.integers(2, 4)), replace=False)
    table = {"name": rng.choice(names, size=count, replace=False)}
    table[source.category_column] = source.categories[chosen]
    for column in measure:
        table[column] = source.columns[column][chosen]
    return pd.DataFrame(table).astype(str)


def make_questions(
    table: pd.DataFrame, category_column: str, rng: np.random.Generator
) -> list[Question]:
    """The questions about `table`, in the order of the module docstring."""
    cells = table.to_numpy()
    columns = list(table.columns)
    measures = [c for c in columns if c not in ("name", category_column)]
    cat = columns.index(category_column)
    questions = []
    r = int(rng.integers(len(table)))
    column = str(rng.choice(measures))
    c = columns.index(column)
    questions.append(Question(f"what is the {column} of {cells[r, 0]}?", [(r, c)], 0, np.nan))
    column = str(rng.choice(measures))
    c = columns.index(column)
    values = list(cells[:, c])
    unique = [i for i, v in enumerate(values) if values.count(v) == 1]
    if unique:
        r = int(rng.choice(unique))
        questions.append(Question(f"which name has {column} {cells[r, c]}?", [(r, 0)], 0, np.nan))
    for aggregation, word in ((1, "total"), (2, "average")):
        category = str(rng.choice(cells[:, cat]))
        column = str(rng.choice(measures))
        c = columns.index(column)
        rows = [i for i in range(len(table)) if cells[i, cat] == category]
        numbers = [float(cells[i, c]) for i in rows]
        result = sum(numbers) if aggregation == 1 else sum(numbers) / len(numbers)
        text = f"what is the {word} {column} of {category}?"
        questions.append(Question(text, [(i, c) for i in rows], aggregation, result))
    category = str(rng.choice(cells[:, cat]))
    rows = [i for i in range(len(table)) if cells[i, cat] == category]
    text = f"how many rows are {category}?"
    questions.append(Question(text, [(i, cat) for i in rows], 3, float(len(rows))))
    return questions


def table_json(table: pd.DataFrame) -> str:
    """A table as the `table` feature stores it: {"columns": [...], "rows": [[...], ...]}."""
    return json.dumps({"columns": list(table.columns), "rows": table.to_numpy().tolist()})


def read_table(text: str | bytes) -> pd.DataFrame:
    """The inverse of `table_json`."""
    import pandas as pd  # a quarter of a second: only table data needs it, not every run

    table = json.loads(text)
    return pd.DataFrame(table["rows"], columns=table["columns"])


@dataclasses.dataclass
class TableQuestionsConfig(tfds.core.BuilderConfig):
    """`train_tables` and `validation_tables` per source dataset, drawn with `seed`;
    `train_percent` of each source's rows are for training tables."""

    train_tables: int = 1000
    validation_tables: int = 40
    seed: int = 0
    train_percent: int = 70


class TableQuestions(EmbeddedBuilder):
    """Questions about iris and wine tables, with answer cells and aggregation operators."""

    BUILDER_CONFIGS = [
        TableQuestionsConfig(name="default", description="1000 + 40 tables per source."),
        TableQuestionsConfig(
            name="quick",
            description="4 + 2 tables per source.",
            train_tables=4,
            validation_tables=2,
        ),  # fmt: skip
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    # JSON (see table_json): a table is one record's worth of strings.
                    "table": tfds.features.Text(),
                    "table_id": np.int32,
                    "question": tfds.features.Text(),
                    "answer_coordinates": tfds.features.Tensor(shape=(None, 2), dtype=np.int32),
                    "aggregation": tfds.features.ClassLabel(names=AGGREGATIONS),
                    # As bytes: tf.train.Example would store float32.
                    "float_answer": tfds.features.Tensor(
                        shape=(), dtype=np.float64, encoding=tfds.features.Encoding.BYTES
                    ),
                }
            ),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
            # Records in the order they were made: a table's questions together and in order.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing is downloaded: the measurements ship with scikit-learn.
        config = self.builder_config
        rng = np.random.default_rng(config.seed)
        sources_, names = sources(), module_names()
        row_splits = []
        for source in sources_:
            rows = rng.permutation(len(source.categories))
            cut = int(config.train_percent / 100 * len(rows))
            row_splits.append((rows[:cut], rows[cut:]))
        # Drawn in order from the one generator: every training table, then validation.
        tables = {"train": [], "validation": []}
        for split, part, count in (
            ("train", 0, config.train_tables),
            ("validation", 1, config.validation_tables),
        ):
            for source, rows in zip(sources_, row_splits, strict=True):
                for _ in range(count):
                    table = make_table(source, rows[part], names, rng)
                    questions = make_questions(table, source.category_column, rng)
                    tables[split].append((table, questions))
        return {split: self._generate_examples(items) for split, items in tables.items()}

    def _generate_examples(self, items) -> Iterator[tuple[str, dict]]:
        for table_id, (table, questions) in enumerate(items):
            text = table_json(table)
            for index, q in enumerate(questions):
                yield (
                    f"{table_id:06d}-{index}",
                    {
                        "table": text,
                        "table_id": table_id,
                        "question": q.text,
                        "answer_coordinates": np.asarray(q.coordinates, np.int32).reshape(-1, 2),
                        "aggregation": q.aggregation,
                        "float_answer": q.float_answer,
                    },
                )
