import pytest

from tests.models.gpt.reference import random_hf_model


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """(the transformers model, the directory its save_pretrained wrote) at the TINY sizes."""
    model = random_hf_model()
    path = tmp_path_factory.mktemp("tiny-gpt2")
    model.save_pretrained(path)
    return model, path
