"""Wav2Vec2's character vocabulary: text -> CTC labels, and CTC frame ids -> text and offsets.

Reads and writes transformers' `vocab.json` and `tokenizer_config.json`. Decoding is greedy CTC
as `Wav2Vec2CTCTokenizer.decode` does it: repeated ids merge, the blank (the pad token) drops,
the word delimiter `|` becomes a space, and the text is stripped.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from polyformer.checkpoint_io import read_json
from polyformer.models.inputs import pad_rows

VOCAB = "vocab.json"
TOKENIZER_CONFIG = "tokenizer_config.json"


@dataclasses.dataclass(frozen=True)
class CharOffset:
    """One emitted character and the frames `[start, end)` its CTC group covers."""

    char: str
    start_offset: int
    end_offset: int


@dataclasses.dataclass(frozen=True)
class WordOffset:
    """One word and the frames `[start, end)` from its first to its last character."""

    word: str
    start_offset: int
    end_offset: int


@dataclasses.dataclass(frozen=True)
class CTCDecoding:
    """A decoded sequence: its text and, when asked for, character and word offsets in frames."""

    text: str
    char_offsets: list[CharOffset] | None = None
    word_offsets: list[WordOffset] | None = None


def word_offsets(chars: Sequence[CharOffset], delimiter: str = " ") -> list[WordOffset]:
    """Characters -> words: each maximal run of non-delimiter characters, from the start of its
    first character to the end of its last."""
    words = []
    for is_space, run in itertools.groupby(chars, key=lambda c: c.char == delimiter):
        if not is_space:
            run = list(run)
            text = "".join(c.char for c in run)
            words.append(WordOffset(text, run[0].start_offset, run[-1].end_offset))
    return words


@dataclasses.dataclass(frozen=True)
class Wav2Vec2CTCTokenizer:
    """A character vocabulary for CTC. Field names are those of `tokenizer_config.json`.

    `vocab` maps tokens (characters, `|`, and the special tokens) to ids; `pad_token` is also
    the CTC blank. With `do_lower_case`, text is upper-cased to encode and decoded text is
    lower-cased (transformers' meaning of the flag, for upper-case vocabularies).
    """

    vocab: Mapping[str, int]
    pad_token: str = "<pad>"
    unk_token: str = "<unk>"
    bos_token: str = "<s>"
    eos_token: str = "</s>"
    word_delimiter_token: str = "|"
    replace_word_delimiter_char: str = " "
    do_lower_case: bool = False

    def __post_init__(self):
        for name in ("pad_token", "unk_token", "word_delimiter_token"):
            if getattr(self, name) not in self.vocab:
                raise ValueError(f"{name} {getattr(self, name)!r} is not in the vocabulary")
        ids = list(self.vocab.values())
        if len(set(ids)) != len(ids):
            raise ValueError("the vocabulary maps two tokens to one id")

    @property
    def id_to_token(self) -> dict[int, str]:
        return {i: token for token, i in self.vocab.items()}

    @property
    def pad_token_id(self) -> int:
        return self.vocab[self.pad_token]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> Wav2Vec2CTCTokenizer:
        """Reads `vocab.json` (and `tokenizer_config.json` if present) from directory `path`.
        A multilingual vocab.json (one vocabulary per language) needs the config's
        `target_lang`."""
        directory = Path(path)
        vocab = read_json(directory, VOCAB)
        config = {}
        if (directory / TOKENIZER_CONFIG).is_file():
            config = read_json(directory, TOKENIZER_CONFIG)
        if vocab and all(isinstance(v, dict) for v in vocab.values()):
            lang = config.get("target_lang")
            if lang not in vocab:
                raise ValueError(
                    f"{directory / VOCAB} holds one vocabulary per language ({', '.join(vocab)}); "
                    f"tokenizer_config.json's target_lang {lang!r} names none of them"
                )
            vocab = vocab[lang]
        names = {f.name for f in dataclasses.fields(cls)} - {"vocab"}
        return cls(vocab=dict(vocab), **{k: v for k, v in config.items() if k in names})

    def save_pretrained(self, path: str | os.PathLike) -> None:
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        vocab = json.dumps(dict(self.vocab), indent=2, sort_keys=True, ensure_ascii=False)
        (directory / VOCAB).write_text(vocab + "\n", encoding="utf-8")
        config = {k: v for k, v in dataclasses.asdict(self).items() if k != "vocab"}
        config["tokenizer_class"] = "Wav2Vec2CTCTokenizer"
        (directory / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))

    # -- text -> labels ----------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Character ids of `text`, spaces as the word delimiter; characters outside the
        vocabulary become `unk_token` (as transformers does)."""
        if self.do_lower_case:
            text = text.upper()
        unk = self.vocab[self.unk_token]
        delimiter = self.word_delimiter_token
        return [self.vocab.get(c, unk) for c in text.replace(" ", delimiter)]

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """CTC labels for a batch: `{"input_ids", "attention_mask"}`, int32 `[batch, longest]`,
        padded with the pad id (mask 0 there)."""
        if isinstance(texts, str):
            raise ValueError("give a list of texts, not one string")
        encoded = [self.encode(t) for t in texts]
        longest = max((len(e) for e in encoded), default=0)
        ids, mask = pad_rows(encoded, longest, self.pad_token_id, np.int32)
        return {"input_ids": ids, "attention_mask": mask}

    # -- frame ids -> text ---------------------------------------------------------------------

    def decode(
        self,
        ids: Sequence[int] | np.ndarray,
        *,
        skip_special_tokens: bool = False,
        group_tokens: bool = True,
        output_char_offsets: bool = False,
        output_word_offsets: bool = False,
    ) -> str | CTCDecoding:
        """Greedy CTC decoding of per-frame ids `[frames]`; `group_tokens=False` decodes a
        label sequence instead (repeats kept; as in transformers, blanks still drop).

        Returns the text, or a `CTCDecoding` with offsets in frames when offsets are asked for
        (multiply by `seconds_per_frame` for seconds). Ids outside the vocabulary decode as
        `unk_token`; special tokens other than the blank and the delimiter are kept unless
        `skip_special_tokens`, as in transformers.
        """
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise ValueError(f"decode takes one sequence [frames], got shape {ids.shape}")
        id_to_token = self.id_to_token
        tokens = [id_to_token.get(int(i), self.unk_token) for i in ids]
        if skip_special_tokens:
            special = {self.bos_token, self.eos_token, self.unk_token, self.pad_token}
            tokens = [t for t in tokens if t not in special]
        chars = []
        start = 0
        runs = itertools.groupby(tokens) if group_tokens else ((t, [t]) for t in tokens)
        for token, run in runs:
            end = start + len(list(run))
            if token != self.pad_token:
                char = (
                    self.replace_word_delimiter_char
                    if token == self.word_delimiter_token
                    else (token)
                )
                chars.append(CharOffset(char, start, end))
            start = end
        text = "".join(c.char for c in chars).strip()
        if self.do_lower_case:
            text = text.lower()
        if not (output_char_offsets or output_word_offsets):
            return text
        return CTCDecoding(
            text=text,
            char_offsets=chars if output_char_offsets else None,
            word_offsets=word_offsets(chars, self.replace_word_delimiter_char)
            if output_word_offsets
            else None,
        )

    def batch_decode(
        self,
        ids: np.ndarray | Sequence[Sequence[int]],
        lengths: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> list[str] | list[CTCDecoding]:
        """`decode` for each row of `ids` `[batch, frames]`; `lengths` `[batch]` (e.g. from the
        attention mask) drops the padded frames of each row first."""
        rows = list(ids)
        if lengths is not None:
            if len(lengths) != len(rows):
                raise ValueError(f"{len(lengths)} lengths for {len(rows)} sequences")
            rows = [row[: int(n)] for row, n in zip(rows, lengths, strict=True)]
        return [self.decode(row, **kwargs) for row in rows]

    def decode_logits(
        self, logits: np.ndarray, lengths: Sequence[int] | None = None, **kwargs: Any
    ) -> list[str] | list[CTCDecoding]:
        """Greedy decoding of `logits` `[batch, frames, vocab]`: argmax per frame, then
        `batch_decode`."""
        logits = np.asarray(logits)
        if logits.ndim != 3 or logits.shape[-1] != self.vocab_size:
            raise ValueError(
                f"logits of shape {logits.shape}: expected [batch, frames, {self.vocab_size}]"
            )
        return self.batch_decode(logits.argmax(-1), lengths, **kwargs)


def offsets_in_seconds(
    offsets: Sequence[CharOffset | WordOffset], seconds_per_frame: float
) -> list[dict[str, Any]]:
    """Frame offsets -> `{"text", "timestamp": (start_s, end_s)}`, the form transformers'
    speech-recognition pipeline returns with `return_timestamps`. `seconds_per_frame`: the
    model's `inputs_to_logits_ratio / sampling_rate`."""
    return [
        {
            "text": o.char if isinstance(o, CharOffset) else o.word,
            "timestamp": (o.start_offset * seconds_per_frame, o.end_offset * seconds_per_frame),
        }
        for o in offsets
    ]
