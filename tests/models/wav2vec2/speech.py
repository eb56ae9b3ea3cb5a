"""Real speech for the wav2vec2 tests: espeak-ng reading known text, at 16 kHz."""

import functools

import numpy as np
import pytest

from polyformer.datasets.spoken_digits import espeak_available, synthesize

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")


@functools.cache
def speech(text: str, voice: str = "en-us", speed: int = 175, pitch: int = 50) -> np.ndarray:
    """float32 `[samples]` at 16 kHz; cached, so tests share one synthesis per utterance."""
    return synthesize(text, voice=voice, speed=speed, pitch=pitch)
