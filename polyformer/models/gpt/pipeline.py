"""`pf.pipeline("text-generation", path)`: prompts in, continued text out."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from polyformer.models.gpt.generate import generate
from polyformer.models.gpt.tokenizer import GPT2Tokenizer


@dataclasses.dataclass
class TextGenerationPipeline:
    """Continues prompts with a causal language model and its tokenizer.

    `pipe("Once upon a time", max_new_tokens=40)` returns `[{"generated_text": ...}]` (the prompt
    followed by its continuation), one list per prompt when given several, as transformers does.
    Keyword arguments go to `polyformer.models.gpt.generate`.
    """

    model: Any
    tokenizer: GPT2Tokenizer

    def __call__(
        self, prompts: str | Sequence[str], *, max_new_tokens: int = 50, **generate_kwargs
    ) -> list[dict[str, str]] | list[list[dict[str, str]]]:
        single = isinstance(prompts, str)
        texts = [prompts] if single else list(prompts)
        if not texts or any(not text for text in texts):
            raise ValueError("give at least one non-empty prompt")
        batch = self.tokenizer(texts)
        tokens = generate(
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

    @classmethod
    def from_model(cls, model: Any, directory: str | os.PathLike) -> TextGenerationPipeline:
        """A loaded model with the tokenizer files of its checkpoint `directory`."""
        return cls(model, GPT2Tokenizer.from_pretrained(directory))
