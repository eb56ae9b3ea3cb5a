"""The table-QA experiment: its questions are answerable from its own labels, and a quick run
trains, evaluates and writes its report."""

import json

import numpy as np

from experiments import table_qa
from polyformer.models.tapas.decoding import convert_logits_to_predictions
from polyformer.models.tapas.tokenizer import TapasTokenizer


def test_gold_labels_decode_to_the_gold_answers():
    """Logits that select exactly the labelled tokens, with the gold operator, are scored
    correct for every question: tables, labels and the scoring agree."""
    rng = np.random.default_rng(0)
    sources = table_qa.sources()
    names = table_qa.module_names()
    tokenizer = TapasTokenizer(table_qa.vocabulary(sources, names), model_max_length=128)
    rows = [np.arange(len(s.categories)) for s in sources]
    data, meta = table_qa.build_set(tokenizer, sources, rows, names, 3, 128, rng)
    assert {q.aggregation for _, q in meta} == {0, 1, 2, 3}
    logits = np.where(data["labels"] > 0, 10.0, -10.0)
    aggregation = np.eye(4)[data["aggregation_labels"]]
    coordinates, operators = convert_logits_to_predictions(data, logits, aggregation)
    for (cells, question), coords, op in zip(meta, coordinates, operators, strict=True):
        assert coords == sorted(question.coordinates), question.text
        assert table_qa.is_correct(cells, question, coords, op), question.text
        if question.aggregation in (0, 3):  # no other operator can give the same answer
            assert not table_qa.is_correct(cells, question, coords, (op + 1) % 4)


def test_quick_run_writes_its_report(tmp_path):
    results = tmp_path / "table_qa.md"
    result = table_qa.main(["--quick", "--out", str(tmp_path / "run"), "--results", str(results)])
    saved = json.loads((tmp_path / "run" / "table_qa.json").read_text())
    assert saved["settings"]["steps"] == len(saved["losses"]) == 10
    assert all(np.isfinite(saved["losses"]))
    counts = sum(v["count"] for v in result["after"]["per_type"].values())
    assert counts == result["eval_examples"] > 0
    text = results.read_text()
    assert "| all |" in text and "Answer accuracy on held-out tables" in text
