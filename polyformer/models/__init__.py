"""The model families. Each one is a subpackage: config.py, model.py (nnx modules), convert.py
(its Hugging Face conversion table), the pre/post-processing and pipeline it needs, and
family.py, whose `FAMILY` record its `__init__.py` exports. `FAMILIES` lists them by config.json's
`model_type`: adding a family is one folder and one line here. `config.py`, `convert.py`,
`encoder.py` and `layers.py` here are the machinery the families share.
"""

from polyformer.models import clip, gpt, tapas, vit, wav2vec2
from polyformer.models.family import Family

FAMILIES: dict[str, Family] = {
    family.model_type: family
    for family in (gpt.FAMILY, vit.FAMILY, clip.FAMILY, wav2vec2.FAMILY, tapas.FAMILY)
}

__all__ = ["FAMILIES", "Family"]
