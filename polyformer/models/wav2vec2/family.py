"""Wav2Vec2's record in `polyformer.models.FAMILIES`."""

from polyformer.models.family import Family
from polyformer.models.wav2vec2 import convert
from polyformer.models.wav2vec2.config import Wav2Vec2Config
from polyformer.models.wav2vec2.model import build
from polyformer.models.wav2vec2.pipeline import AutomaticSpeechRecognitionPipeline

FAMILY = Family(
    model_type="wav2vec2", config=Wav2Vec2Config, build=build, table=convert.table,
    pipelines={"automatic-speech-recognition": AutomaticSpeechRecognitionPipeline},
    objectives=("ctc",), command="transcribe", try_command="transcribe {model} SPEECH.wav",
)  # fmt: skip
