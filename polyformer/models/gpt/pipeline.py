"""`pf.pipeline("text-generation", path)`: prompts in, continued text out."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from polyformer.models.gpt.generate import generate, generate_stream
from polyformer.models.gpt.tokenizer import GPT2Tokenizer
from polyformer.models.inputs import check_vocabulary


def text_pieces(decode: Callable[[list[int]], str], steps: Iterable[np.ndarray]) -> Iterator[str]:
    """The text that each step of one row `[1]` adds, as transformers' `TextStreamer` prints it:
    `decode` of all tokens so far, less what was yielded before. While the text ends in U+FFFD
    (a character whose bytes have not all come) it is held back; at the end, what is left."""
    ids: list[int] = []
    shown = ""
    text = ""
    for step in steps:
        ids.append(int(step[0]))
        text = decode(ids)
        if text.endswith("\ufffd"):
            continue
        if text[len(shown) :]:
            yield text[len(shown) :]
        shown = text
    if text[len(shown) :]:
        yield text[len(shown) :]


@dataclasses.dataclass
class TextGenerationPipeline:
    """Continues prompts with a causal language model and its tokenizer.

    `pipe("Once upon a time", max_new_tokens=40)` returns `[{"generated_text": ...}]` (the prompt
    followed by its continuation; num_return_sequences of them), one list per prompt when given
    several, as transformers does. Keyword arguments go to `polyformer.models.gpt.generate`
    (do_sample, num_beams, repetition_penalty, ...). `pipe.stream(prompt, ...)` yields the text
    as generation decides it.
    """

    model: Any
    tokenizer: GPT2Tokenizer

    def __call__(
        self, prompts: str | Sequence[str], *, max_new_tokens: int = 50, **generate_kwargs
    ) -> list[dict[str, str]] | list[list[dict[str, str]]]:
        single = isinstance(prompts, str)
        texts = _check(prompts, max_new_tokens, generate_kwargs.get("top_k", 0))
        batch = self.tokenizer(texts)
        tokens = generate(
            self.model,
            batch["input_ids"],
            batch["attention_mask"],
            max_new_tokens=max_new_tokens,
            **generate_kwargs,
        )
        prompt_length = batch["input_ids"].shape[1]
        # Rows b * n ... b * n + n - 1 are prompt b's n sequences.
        n = tokens.shape[0] // len(texts)
        results = [
            [
                {
                    "generated_text": text
                    + self.tokenizer.decode(row[prompt_length:], skip_special_tokens=True)
                }
                for row in tokens[b * n : (b + 1) * n]
            ]
            for b, text in enumerate(texts)
        ]
        return results[0] if single else results

    def stream(self, prompt: str, *, max_new_tokens: int = 50, **generate_kwargs) -> Iterator[str]:
        """Yields `prompt`, then each piece of its continuation as soon as generation decides
        it (see `text_pieces`); joined, they are `self(prompt, ...)`'s text. Takes generate's
        options with num_beams=1 and one sequence; they are checked before the first yield."""
        [text] = _check(prompt, max_new_tokens, generate_kwargs.get("top_k", 0))
        if generate_kwargs.get("num_return_sequences", 1) != 1:
            raise ValueError("stream() continues one prompt with one sequence")
        batch = self.tokenizer([text])
        steps = generate_stream(
            self.model,
            batch["input_ids"],
            batch["attention_mask"],
            max_new_tokens=max_new_tokens,
            **generate_kwargs,
        )
        yield text
        yield from text_pieces(
            lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True), steps
        )

    @classmethod
    def from_model(cls, model: Any, directory: str | os.PathLike) -> TextGenerationPipeline:
        """A loaded model with the tokenizer files of its checkpoint `directory`."""
        tokenizer = GPT2Tokenizer.from_pretrained(directory)
        check_vocabulary(len(tokenizer), model.config.vocab_size, directory)
        return cls(model, tokenizer)

    # `polyformer generate`: its help and the arguments after the checkpoint.
    COMMAND_HELP = "continue prompts with a GPT-2 checkpoint"
    CHECKPOINT_HELP = "a checkpoint directory (config.json, weights, tokenizer) or a hub id"

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        # Defaults are generate()'s, so that it refuses only options the user set.
        parser.add_argument("prompts", nargs="+", help="one or more prompts")
        parser.add_argument("--max-new-tokens", type=int, default=50)
        parser.add_argument("--do-sample", action="store_true", help="sample, not greedy/beams")
        parser.add_argument("--temperature", type=float, default=1.0, help="with --do-sample")
        parser.add_argument("--top-k", type=int, default=50, help="with --do-sample (0: off)")
        parser.add_argument("--top-p", type=float, default=1.0, help="with --do-sample")
        parser.add_argument("--seed", type=int, help="with --do-sample (default 0)")
        parser.add_argument("--num-beams", type=int, default=1, help="beam search when > 1")
        parser.add_argument(
            "--num-return-sequences",
            type=int,
            default=1,
            help="completions per prompt (at most --num-beams, or with --do-sample)",
        )
        parser.add_argument(
            "--length-penalty",
            type=float,
            default=1.0,
            help="with --num-beams: beams score log p / length ** this",
        )
        parser.add_argument(
            "--early-stopping",
            choices=EARLY_STOPPING,
            default="false",
            help="with --num-beams: transformers' stopping rule",
        )
        parser.add_argument(
            "--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats"
        )
        parser.add_argument(
            "--no-repeat-ngram-size", type=int, default=0, help="no n-gram of this size twice"
        )
        parser.add_argument(
            "--min-new-tokens", type=int, default=0, help="no end of text before this many"
        )
        parser.add_argument(
            "--bad-words",
            nargs="+",
            metavar="TEXT",
            help="texts never generated, each as written and after a space",
        )

    def run_command(self, args: argparse.Namespace) -> None:
        """Prints the completion of each prompt: as it is generated when there is one prompt
        and one sequence, else each when all are done."""
        sampling = {
            "--temperature": args.temperature != 1.0,
            "--top-k": args.top_k != 50,
            "--top-p": args.top_p != 1.0,
            "--seed": args.seed is not None,
        }
        given = [option for option, changed in sampling.items() if changed]
        if given and not args.do_sample:
            # Greedy decoding and beam search would ignore them, as generate() refuses to.
            raise ValueError(f"{', '.join(given)} only apply to sampling: add --do-sample")
        options = {
            "do_sample": args.do_sample,
            "temperature": args.temperature,
            "top_k": args.top_k,
            "top_p": args.top_p,
            "rng": args.seed or 0,
            "num_beams": args.num_beams,
            "num_return_sequences": args.num_return_sequences,
            "length_penalty": args.length_penalty,
            "early_stopping": EARLY_STOPPING[args.early_stopping],
            "repetition_penalty": args.repetition_penalty,
            "no_repeat_ngram_size": args.no_repeat_ngram_size,
            "min_new_tokens": args.min_new_tokens,
            "bad_words_ids": bad_words_ids(self.tokenizer, args.bad_words),
        }
        if len(args.prompts) == 1 and args.num_beams == 1 and args.num_return_sequences == 1:
            for piece in self.stream(
                args.prompts[0], max_new_tokens=args.max_new_tokens, **options
            ):
                print(piece, end="", flush=True)
            print()
            return
        for results in self(args.prompts, max_new_tokens=args.max_new_tokens, **options):
            for result in results:
                print(result["generated_text"])


# --early-stopping's values -> generate's.
EARLY_STOPPING: dict[str, bool | str] = {"true": True, "false": False, "never": "never"}


def bad_words_ids(tokenizer: GPT2Tokenizer, words: Sequence[str] | None) -> list[list[int]] | None:
    """generate's bad_words_ids for texts: each tokenized as written and, when it does not start
    with a space, after one (a byte-level BPE word inside a text starts with its space)."""
    if words is None:
        return None
    forms = dict.fromkeys(
        form for word in words for form in (word, *([" " + word] if word[:1] != " " else []))
    )
    return [tokenizer.encode(form) for form in forms]


def _check(prompts: str | Sequence[str], max_new_tokens: int, top_k: int) -> list[str]:
    """The prompts as a list; ValueError for anything but non-empty strings, or for a
    max_new_tokens or top_k that is not an int."""
    texts = [prompts] if isinstance(prompts, str) else prompts
    if not isinstance(texts, Sequence) or any(not isinstance(t, str) for t in texts):
        raise ValueError(
            f"prompts must be a string or a list of strings, got {type(prompts).__name__}"
        )
    if not texts or any(not text for text in texts):
        raise ValueError("give at least one non-empty prompt")
    for name, value in {"max_new_tokens": max_new_tokens, "top_k": top_k}.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int, got {value!r}")
    return list(texts)
