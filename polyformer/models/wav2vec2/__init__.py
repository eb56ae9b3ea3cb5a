"""Wav2Vec2: `Wav2Vec2ForCTC` and `Wav2Vec2Model`, their config and conversion table; `FAMILY`
is its record in `polyformer.models.FAMILIES`."""

from polyformer.models.wav2vec2 import convert
from polyformer.models.wav2vec2.config import Wav2Vec2Config
from polyformer.models.wav2vec2.family import FAMILY
from polyformer.models.wav2vec2.model import (
    CTCOutput,
    Wav2Vec2BaseModelOutput,
    Wav2Vec2ForCTC,
    Wav2Vec2Model,
    build,
    feat_extract_output_lengths,
    frame_mask,
    spec_augment_mask,
)

__all__ = [
    "FAMILY",
    "CTCOutput",
    "Wav2Vec2BaseModelOutput",
    "Wav2Vec2Config",
    "Wav2Vec2ForCTC",
    "Wav2Vec2Model",
    "build",
    "convert",
    "feat_extract_output_lengths",
    "frame_mask",
    "spec_augment_mask",
]
