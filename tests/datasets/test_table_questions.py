import numpy as np
import pandas as pd
import pytest

from polyformer.datasets import TableQuestions
from polyformer.datasets import table_questions as tq


def records(builder, split):
    source = builder.as_data_source(split=split)
    return [source[i] for i in range(len(source))]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    builder = TableQuestions(config="quick", data_dir=str(tmp_path_factory.mktemp("tfds")))
    builder.download_and_prepare()
    return {split: records(builder, split) for split in ("train", "validation")}


def test_tables_keep_their_questions_together_and_in_order(built):
    # quick: 4 training and 2 validation tables per source, 4 or 5 questions each.
    for split, tables in (("train", 8), ("validation", 4)):
        ids = [int(r["table_id"]) for r in built[split]]
        assert ids == sorted(ids) and set(ids) == set(range(tables))
        for table_id in range(tables):
            asked = [r for r in built[split] if r["table_id"] == table_id]
            operators = [int(r["aggregation"]) for r in asked]
            assert operators[0] == 0 and operators[-3:] == [1, 2, 3], operators
            assert len({r["table"] for r in asked}) == 1


def test_answers_are_the_operator_over_the_answer_cells(built):
    for record in built["train"] + built["validation"]:
        table = tq.read_table(record["table"])
        assert 4 <= len(table) <= 6 and table.columns[0] == "name"
        cells = [table.iat[r, c] for r, c in record["answer_coordinates"]]
        operator = tq.AGGREGATIONS[record["aggregation"]]
        question = record["question"].decode()
        if operator == "NONE":
            assert np.isnan(record["float_answer"]) and len(cells) == 1
        elif operator == "COUNT":
            assert record["float_answer"] == len(cells) and cells[0] in question
        else:
            numbers = [float(c) for c in cells]
            expected = sum(numbers) / (len(numbers) if operator == "AVERAGE" else 1)
            assert record["float_answer"] == expected  # float64, stored exactly


def test_every_word_is_in_the_word_list(built):
    words = set(tq.words())
    for record in built["validation"]:
        table = tq.read_table(record["table"])
        text = " ".join([*table.columns, *table.to_numpy().ravel(), record["question"].decode()])
        assert set(text.replace("?", " ? ").replace(".", " . ").split()) <= words


def test_table_json_round_trips():
    table = pd.DataFrame({"name": ["os", "re"], "hue": ["1.04", "0.7"]})
    pd.testing.assert_frame_equal(tq.read_table(tq.table_json(table)), table)


def test_rebuilding_gives_the_same_records(built, tmp_path):
    again = TableQuestions(config="quick", data_dir=str(tmp_path))
    again.download_and_prepare()
    for a, b in zip(records(again, "validation"), built["validation"], strict=True):
        assert a["question"] == b["question"] and a["table"] == b["table"]
        np.testing.assert_array_equal(a["answer_coordinates"], b["answer_coordinates"])
