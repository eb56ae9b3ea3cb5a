"""The table-QA experiment: its questions are answerable from its own labels, and a quick run
trains through the Trainer, evaluates and writes its report."""

import json

import numpy as np
import pytest

from experiments import table_qa
from polyformer.models.tapas.decoding import convert_logits_to_predictions
from polyformer.training.data.tables import TableQuestionsData


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


def test_gold_labels_decode_to_the_gold_answers(data_dir):
    """Logits that select exactly the labelled tokens, with the gold operator, are scored
    correct for every question: tables, labels and the scoring agree."""
    data = TableQuestionsData(train_tables=1, validation_tables=3, data_dir=str(data_dir))
    encoded, questions = data.encode("validation")
    assert {q.question.aggregation for q in questions} == {0, 1, 2, 3}
    logits = np.where(encoded["labels"] > 0, 10.0, -10.0)
    aggregation = np.eye(4)[encoded["aggregation_labels"]]
    coordinates, operators = convert_logits_to_predictions(encoded, logits, aggregation)
    for asked, coords, op in zip(questions, coordinates, operators, strict=True):
        assert coords == sorted(asked.question.coordinates), asked.question.text
        assert table_qa.is_correct(asked, coords, op), asked.question.text
        if asked.question.aggregation in (0, 3):  # no other operator can give the same answer
            assert not table_qa.is_correct(asked, coords, (op + 1) % 4)


def test_quick_run_writes_its_report(tmp_path, data_dir):
    results = tmp_path / "table_qa.md"
    argv = ["--quick", "--out", str(tmp_path / "run"), "--results", str(results)]
    result = table_qa.main([*argv, "--set", f"data.data_dir={data_dir}"])
    saved = json.loads((tmp_path / "run" / "table_qa.json").read_text())
    assert saved["settings"]["steps"] == len(saved["losses"]) == 10
    assert all(np.isfinite(saved["losses"]))
    counts = sum(v["count"] for v in result["after"]["per_type"].values())
    assert counts == result["eval_examples"] > 0
    text = results.read_text()
    assert "| all |" in text and "Answer accuracy on held-out tables" in text
