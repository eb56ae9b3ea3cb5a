"""The model families. Each one is a subpackage: config.py, model.py (nnx modules), convert.py
(its Hugging Face conversion table), the pre/post-processing and pipelines it needs, and an
`__init__.py` exporting `FAMILY`. `FAMILIES` lists them by config.json's `model_type`: adding a
family is one folder and one line here. `config.py`, `convert.py` and `encoder.py` here are the
machinery the families share.
"""

from polyformer.models import clip, gpt, tapas, vit, wav2vec2
from polyformer.models.family import Family

FAMILIES: dict[str, Family] = {
    family.model_type: family
    for family in (gpt.FAMILY, vit.FAMILY, clip.FAMILY, wav2vec2.FAMILY, tapas.FAMILY)
}

__all__ = ["FAMILIES", "Family"]
