"""Fixtures the clip tests share."""

import pytest

import polyformer as pf
from tests.models.clip.reference import random_hf_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(transformers' tiny CLIPModel, ours loaded from its save_pretrained, the directory)."""
    hf_model = random_hf_model()
    path = tmp_path_factory.mktemp("clip")
    hf_model.save_pretrained(path)
    return hf_model, pf.from_pretrained(path), path
