"""polyformer: GPT, ViT, TAPAS, Wav2Vec2 and CLIP in JAX / Flax NNX on one attention package."""

from polyformer import attention

__all__ = ["attention"]
__version__ = "0.1.0"
