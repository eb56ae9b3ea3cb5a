"""Fixtures the tapas tests share."""

import pytest

from tests.models.tapas.reference import (
    random_hf_model,
)


@pytest.fixture(scope="module")
def wtq_checkpoint(tmp_path_factory):
    """(the transformers model, the directory its save_pretrained wrote): WTQ heads, TINY."""
    model = random_hf_model()
    path = tmp_path_factory.mktemp("tiny-tapas-wtq")
    model.save_pretrained(path)
    return model, path
