"""`pf.pipeline("text-generation", path)`: prompts in, continued text out."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from polyformer.models.gpt.generate import generate
from polyformer.models.gpt.tokenizer import GPT2Tokenizer
from polyformer.models.inputs import check_vocabulary


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
        texts = [prompts] if single else prompts
        if not isinstance(texts, Sequence) or any(not isinstance(t, str) for t in texts):
            raise ValueError(
                f"prompts must be a string or a list of strings, got {type(prompts).__name__}"
            )
        if not texts or any(not text for text in texts):
            raise ValueError("give at least one non-empty prompt")
        counts = {"max_new_tokens": max_new_tokens, "top_k": generate_kwargs.get("top_k", 0)}
        for name, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int, got {value!r}")
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
        tokenizer = GPT2Tokenizer.from_pretrained(directory)
        check_vocabulary(len(tokenizer), model.config.vocab_size, directory)
        return cls(model, tokenizer)

    # `polyformer generate`: its help and the arguments after the checkpoint.
    COMMAND_HELP = "continue prompts with a GPT-2 checkpoint"
    CHECKPOINT_HELP = "a checkpoint directory (config.json, weights, tokenizer)"

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("prompts", nargs="+", help="one or more prompts")
        parser.add_argument("--max-new-tokens", type=int, default=50)
        parser.add_argument("--sample", action="store_true", help="sample, not greedy decoding")
        parser.add_argument("--temperature", type=float, help="with --sample (default 1.0)")
        parser.add_argument("--top-k", type=int, help="with --sample (default 50)")
        parser.add_argument("--top-p", type=float, help="with --sample (default 1.0)")
        parser.add_argument("--seed", type=int, help="with --sample (default 0)")

    def run_command(self, args: argparse.Namespace) -> None:
        """Prints the completion of each prompt."""
        # option -> (generate's argument, the value given or None, its default).
        options = {
            "--temperature": ("temperature", args.temperature, 1.0),
            "--top-k": ("top_k", args.top_k, 50),
            "--top-p": ("top_p", args.top_p, 1.0),
            "--seed": ("rng", args.seed, 0),
        }
        given = [option for option, (_, value, _) in options.items() if value is not None]
        if given and not args.sample:
            # Greedy decoding would ignore them, as generate() refuses to.
            raise ValueError(f"{', '.join(given)} only apply to sampling: add --sample")
        sampling = {
            name: default if value is None else value for name, value, default in options.values()
        }
        sampling = {"do_sample": True, **sampling} if args.sample else {}
        for result in self(args.prompts, max_new_tokens=args.max_new_tokens, **sampling):
            print(result[0]["generated_text"])
