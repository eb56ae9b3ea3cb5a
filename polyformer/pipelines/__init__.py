"""Task-level entry points, named as Hugging Face names them: `pipeline(task, checkpoint)`.

The tasks are those of the families' records (`polyformer.models.FAMILIES`, `Family.pipelines`);
each pipeline class lives in its family's folder and is built from a loaded model and the
checkpoint directory that holds its tokenizer or processor files.
"""

from __future__ import annotations

import os
from typing import Any

from polyformer import hub
from polyformer.checkpoint_io import CONFIG, read_config, resolve
from polyformer.models import FAMILIES

# Task -> the model_type of the family that has it.
TASKS: dict[str, str] = {
    task: model_type for model_type, family in FAMILIES.items() for task in family.pipelines
}


def pipeline(task: str, path: str | os.PathLike, **load_kwargs: Any) -> Any:
    """The pipeline for `task` over the checkpoint directory `path` (or a Hugging Face repo id,
    see `checkpoint_io.resolve`); `load_kwargs` (dtype=, attention=) go to `from_pretrained`.

    Raises ValueError for an unknown task, or for a checkpoint of a family without the task
    ("... is a clip checkpoint; text-generation needs gpt2"), before loading any weights."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
    path = resolve(path)
    model_type = read_config(path).get("model_type")
    family = hub.family_of(model_type, os.path.join(path, CONFIG))
    if task not in family.pipelines:
        raise ValueError(
            f"{path} is a {model_type} checkpoint; {task} needs {TASKS[task]} "
            f"({model_type} checkpoints run: {', '.join(family.pipelines)})"
        )
    model = hub.from_pretrained(path, **load_kwargs)
    return family.pipelines[task].from_model(model, path)


__all__ = ["TASKS", "pipeline"]
