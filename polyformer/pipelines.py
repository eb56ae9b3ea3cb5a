"""Task-level entry points, named as Hugging Face names them: `pipeline(task, checkpoint)`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

from polyformer import hub
from polyformer.models import gpt
from polyformer.models.clip.pipeline import ZeroShotImageClassificationPipeline
from polyformer.models.tapas.pipeline import TableQuestionAnsweringPipeline
from polyformer.models.vit.pipeline import ImageClassificationPipeline
from polyformer.models.wav2vec2.pipeline import AutomaticSpeechRecognitionPipeline


@dataclasses.dataclass
class TextGenerationPipeline:
    """Continues prompts with a causal language model and its tokenizer.

    `pipe("Once upon a time", max_new_tokens=40)` returns `[{"generated_text": ...}]` (the prompt
    followed by its continuation), one list per prompt when given several, as transformers does.
    Keyword arguments go to `polyformer.models.gpt.generate`.
    """

    model: Any
    tokenizer: gpt.GPT2Tokenizer

    def __call__(
        self, prompts: str | Sequence[str], *, max_new_tokens: int = 50, **generate_kwargs
    ) -> list[dict[str, str]] | list[list[dict[str, str]]]:
        single = isinstance(prompts, str)
        texts = [prompts] if single else list(prompts)
        if not texts or any(not text for text in texts):
            raise ValueError("give at least one non-empty prompt")
        batch = self.tokenizer(texts)
        tokens = gpt.generate(
            self.model,
            batch["input_ids"],
            batch["attention_mask"],
            max_new_tokens=max_new_tokens,
            **generate_kwargs,
        )
        prompt_length = batch["input_ids"].shape[1]
        results = []
        for text, row in zip(texts, tokens, strict=True):
            continuation = self.tokenizer.decode(row[prompt_length:], skip_special_tokens=True)
            results.append([{"generated_text": text + continuation}])
        return results[0] if single else results


def _text_generation(path: str | os.PathLike, **load_kwargs) -> TextGenerationPipeline:
    return TextGenerationPipeline(
        hub.from_pretrained(path, **load_kwargs), gpt.GPT2Tokenizer.from_pretrained(path)
    )


TASKS: dict[str, Callable[..., Any]] = {
    "text-generation": _text_generation,
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
