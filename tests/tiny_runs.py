"""A tiny run config of every model family, with random data of its objective's shapes
(`Objective.synthetic`): what the compile and autodiff tests build from."""

from polyformer.models.clip import CLIPConfig
from polyformer.models.gpt import GPT2Config
from polyformer.models.tapas import TapasConfig
from polyformer.models.vit import ViTConfig
from polyformer.models.wav2vec2 import Wav2Vec2Config
from polyformer.training.config import RunConfig
from polyformer.training.objectives import OBJECTIVES

# Each family's tiny config, objective and example length (tokens; audio samples for Wav2Vec2).
RUNS = {
    "gpt2": (GPT2Config.tiny(), "causal_lm", 16),
    "vit": (ViTConfig.tiny(), "image_classification", 0),
    "clip": (CLIPConfig.tiny(), "clip_contrastive", 0),
    "wav2vec2": (Wav2Vec2Config.tiny(), "ctc", 400),
    "tapas": (TapasConfig.tiny(), "tapas", 16),
}
FAMILIES = tuple(RUNS)


def run_config(family: str, model=None, **fields) -> RunConfig:
    """The tiny run of `family`: its tiny model (or `model`, a config of the family), objective
    and random data."""
    tiny, objective, length = RUNS[family]
    model = tiny if model is None else model
    data = OBJECTIVES[objective].synthetic(model, length, train_examples=8, eval_examples=8)
    defaults = dict(model=model, objective=objective, data=data, batch_size=8, steps=10)
    return RunConfig(**{**defaults, **fields})
