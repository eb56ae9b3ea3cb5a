"""Fixtures the vit tests share."""

import pytest
import transformers

import polyformer as pf
from tests.models.vit.reference import (
    random_hf_model,
)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """(transformers' tiny ViTForImageClassification, ours loaded from its save_pretrained)."""
    hf_model = random_hf_model()
    path = tmp_path_factory.mktemp("vit-classifier")
    hf_model.save_pretrained(path)
    return hf_model, pf.from_pretrained(path), path


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    """(transformers' tiny ViTModel with its pooler, ours loaded from its save_pretrained)."""
    hf_model = random_hf_model(transformers.ViTModel, pooler_output_size=29, pooler_act="relu")
    path = tmp_path_factory.mktemp("vit-bare")
    hf_model.save_pretrained(path)
    return hf_model, pf.from_pretrained(path), path
