"""Fixtures the wav2vec2 tests share."""

import pytest

import polyformer as pf
from tests.models.wav2vec2.reference import (
    VARIANTS,
    random_hf_model,
)


@pytest.fixture(scope="module", params=list(VARIANTS))
def checkpoint(request, tmp_path_factory):
    """(variant name, the transformers model, its save_pretrained directory, our model)."""
    hf_model = random_hf_model(VARIANTS[request.param])
    path = tmp_path_factory.mktemp(f"w2v-{request.param}")
    hf_model.save_pretrained(path)
    return request.param, hf_model, path, pf.from_pretrained(path)
