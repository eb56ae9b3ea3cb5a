"""GPT-2's byte-level BPE tokenizer, on the `tokenizers` library (as transformers' fast one)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tokenizers
from tokenizers import decoders, pre_tokenizers

from polyformer.models.inputs import bpe_from_files, tokenizer_from_file

END_OF_TEXT = "<|endoftext|>"


class GPT2Tokenizer:
    """Text <-> GPT-2 token ids; the same ids and text as transformers' GPT2TokenizerFast.

    Build it with `from_pretrained(directory)` (tokenizer.json, else vocab.json + merges.txt) or
    `from_files(vocab_file, merges_file)`.
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, eos_token: str = END_OF_TEXT):
        self.tokenizer = tokenizer
        self.eos_token = eos_token
        self.eos_token_id = tokenizer.token_to_id(eos_token)

    @classmethod
    def from_files(cls, vocab_file: str | os.PathLike, merges_file: str | os.PathLike):
        """From GPT-2's original vocab.json and merges.txt, set up as transformers sets them up:
        byte-level pre-tokenizer and decoder, no prefix space, <|endoftext|> a special token."""
        tokenizer = tokenizers.Tokenizer(bpe_from_files(vocab_file, merges_file))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        if tokenizer.token_to_id(END_OF_TEXT) is not None:
            tokenizer.add_special_tokens([END_OF_TEXT])
        return cls(tokenizer)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> GPT2Tokenizer:
        directory = Path(directory)
        if (directory / "tokenizer.json").is_file():
            return cls(tokenizer_from_file(directory / "tokenizer.json"))
        vocab, merges = directory / "vocab.json", directory / "merges.txt"
        if vocab.is_file() and merges.is_file():
            return cls.from_files(vocab, merges)
        raise FileNotFoundError(
            f"no tokenizer in {directory}: looked for tokenizer.json, or vocab.json and merges.txt"
        )

    def __len__(self) -> int:
        """The number of ids, added tokens included: the model's vocab_size must cover them."""
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def batch_decode(self, rows, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(row, skip_special_tokens) for row in rows]

    def __call__(
        self, texts: Sequence[str], pad_token_id: int | None = None
    ) -> dict[str, np.ndarray]:
        """A batch for the model and `generate`: input_ids and attention_mask `[batch, length]`
        int32, left-padded (with pad_token_id, default the end-of-text id) to the longest text."""
        rows = [self.encode(text) for text in texts]
        pad = self.eos_token_id if pad_token_id is None else pad_token_id
        if pad is None:
            raise ValueError(f"pass pad_token_id: the vocabulary has no {self.eos_token}")
        length = max(map(len, rows))
        input_ids = np.full((len(rows), length), pad, np.int32)
        attention_mask = np.zeros((len(rows), length), np.int32)
        for i, row in enumerate(rows):
            input_ids[i, length - len(row) :] = row
            attention_mask[i, length - len(row) :] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}
