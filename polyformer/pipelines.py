"""Task-level entry points, named as Hugging Face names them: `pipeline(task, checkpoint)`."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from polyformer.models.clip.pipeline import ZeroShotImageClassificationPipeline
from polyformer.models.gpt.pipeline import TextGenerationPipeline
from polyformer.models.tapas.pipeline import TableQuestionAnsweringPipeline
from polyformer.models.vit.pipeline import ImageClassificationPipeline
from polyformer.models.wav2vec2.pipeline import AutomaticSpeechRecognitionPipeline

TASKS: dict[str, Callable[..., Any]] = {
    "text-generation": TextGenerationPipeline.from_pretrained,
    "image-classification": ImageClassificationPipeline.from_pretrained,
    "zero-shot-image-classification": ZeroShotImageClassificationPipeline.from_pretrained,
    "table-question-answering": TableQuestionAnsweringPipeline.from_pretrained,
    "automatic-speech-recognition": AutomaticSpeechRecognitionPipeline.from_pretrained,
}


def pipeline(task: str, path: str | os.PathLike, **load_kwargs) -> Any:
    """The pipeline for `task` over the checkpoint directory `path`; `load_kwargs` (dtype=,
    attention=) go to `from_pretrained`."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[task](path, **load_kwargs)
