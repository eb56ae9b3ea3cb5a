"""Logits -> cells and aggregation, against transformers; answers and their computed result."""

import jax.numpy as jnp
import numpy as np
import pytest

from polyformer.models.tapas import decoding
from polyformer.models.tapas.tokenizer import TapasTokenizer
from tests.models.tapas import tables

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

LABELS = {0: "NONE", 1: "SUM", 2: "AVERAGE", 3: "COUNT"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tapas-decoding")
    vocab = tables.write_vocab(directory)
    theirs = transformers.TapasTokenizer(str(vocab))
    ours = TapasTokenizer.from_pretrained(directory)
    batch = ours(tables.chapters(), tables.BOOK_QUERIES)
    return batch, theirs


@pytest.mark.parametrize("seed", range(4))
def test_predictions_match_transformers(setup, seed):
    batch, theirs = setup
    rng = np.random.default_rng(seed)
    shape = batch["input_ids"].shape
    # Per-cell offsets so that whole cells cross the threshold, token noise so that some cells
    # sit near it, and huge negative logits as the single-column mask writes them.
    offsets = rng.normal(0, 3, size=(shape[0], 8, 8))
    types = batch["token_type_ids"]
    logits = np.stack([offsets[i, types[i, :, 2] % 8, types[i, :, 1] % 8] for i in range(shape[0])])
    logits = (logits + rng.normal(0, 1, size=shape)).astype(np.float32)
    logits[rng.random(shape) < 0.2] = -10000.0
    aggregation = rng.normal(size=(shape[0], 4)).astype(np.float32)

    coordinates, indices = decoding.convert_logits_to_predictions(
        batch, jnp.asarray(logits), jnp.asarray(aggregation)
    )
    data = {key: torch.from_numpy(np.asarray(value)) for key, value in batch.items()}
    expected = theirs.convert_logits_to_predictions(
        data, torch.from_numpy(logits), torch.from_numpy(aggregation)
    )
    assert (coordinates, indices) == (expected[0], expected[1])
    assert any(coordinates) and not all(len(c) == 30 for c in coordinates)

    for threshold in (0.2, 0.9):
        ours_only, none = decoding.convert_logits_to_predictions(batch, logits, None, threshold)
        theirs_only = theirs.convert_logits_to_predictions(
            data, torch.from_numpy(logits), cell_classification_threshold=threshold
        )
        assert none is None and ours_only == theirs_only[0]


def test_shape_mismatch_is_an_error(setup):
    batch, _ = setup
    with pytest.raises(ValueError, match="do not match"):
        decoding.convert_logits_to_predictions(batch, np.zeros((1, 3), np.float32))


def test_answers_as_the_pipeline_formats_them():
    cells = tables.chapters().to_numpy().tolist()
    pages = [(1, 4), (2, 4)]  # 36 and 24 pages
    total = decoding.answer(cells, pages, 1, LABELS)
    assert total.to_dict() == {
        "answer": "SUM > 36, 24",
        "coordinates": pages,
        "cells": ["36", "24"],
        "aggregator": "SUM",
        "result": 60.0,
    }
    assert str(total) == "SUM > 36, 24 = 60"
    assert decoding.answer(cells, pages, 2, LABELS).result == 30.0
    assert decoding.answer(cells, pages, 3, LABELS).result == 2.0
    topic = decoding.answer(cells, [(4, 1)], 0, LABELS)
    assert topic.to_dict() == {
        "answer": "Summarization",
        "coordinates": [(4, 1)],
        "cells": ["Summarization"],
        "aggregator": "NONE",
        "result": None,
    }
    assert str(topic) == "Summarization"
    # A model without an aggregation head; a sum over text has no result.
    assert decoding.answer(cells, [(0, 1)]).to_dict() == {
        "answer": "Introduction",
        "coordinates": [(0, 1)],
        "cells": ["Introduction"],
    }
    assert decoding.answer(cells, [(0, 1)], 1, LABELS).result is None
    assert decoding.aggregate("AVERAGE", []) is None
    assert decoding.aggregate("SUM", ["1,000", "-2.5"]) == 997.5
