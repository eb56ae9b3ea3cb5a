"""Task-level entry points, named as Hugging Face names them: `pipeline(task, checkpoint)`."""

from __future__ import annotations

import importlib
import os
from typing import Any

# Task -> (module, class): a pipeline's module is imported when the task is asked for, so that
# `import polyformer` does not load pandas, soundfile or PIL for tasks nobody runs.
TASKS: dict[str, tuple[str, str]] = {
    "text-generation": ("polyformer.models.gpt.pipeline", "TextGenerationPipeline"),
    "image-classification": ("polyformer.models.vit.pipeline", "ImageClassificationPipeline"),
    "zero-shot-image-classification": (
        "polyformer.models.clip.pipeline",
        "ZeroShotImageClassificationPipeline",
    ),
    "table-question-answering": (
        "polyformer.models.tapas.pipeline",
        "TableQuestionAnsweringPipeline",
    ),
    "automatic-speech-recognition": (
        "polyformer.models.wav2vec2.pipeline",
        "AutomaticSpeechRecognitionPipeline",
    ),
}


def pipeline(task: str, path: str | os.PathLike, **load_kwargs) -> Any:
    """The pipeline for `task` over the checkpoint directory `path`; `load_kwargs` (dtype=,
    attention=) go to `from_pretrained`."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
    module, name = TASKS[task]
    return getattr(importlib.import_module(module), name).from_pretrained(path, **load_kwargs)
