"""polyformer: GPT, ViT, TAPAS, Wav2Vec2 and CLIP in JAX / Flax NNX on one attention package."""

from polyformer import attention, lora
from polyformer.hub import from_pretrained, save_pretrained
from polyformer.pipelines import pipeline

__all__ = ["attention", "from_pretrained", "lora", "pipeline", "save_pretrained"]
__version__ = "0.1.0"
