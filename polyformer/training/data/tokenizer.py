"""Byte-level tokenizers for language-model training: a BPE trained on a corpus, or plain bytes.

Both are `tokenizers.Tokenizer`s set up as GPT-2's (byte-level pre-tokenizer and decoder, no
prefix space, `<|endoftext|>` a special token), so `decode(encode(text)) == text` for any text,
and `save_tokenizer` writes them in the files a GPT-2 checkpoint directory carries.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

END_OF_TEXT = "<|endoftext|>"


def _byte_level(model: models.Model) -> tokenizers.Tokenizer:
    tokenizer = tokenizers.Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_bpe(texts: Iterable[str], vocab_size: int = 4096) -> tokenizers.Tokenizer:
    """A byte-level BPE with `vocab_size` tokens (`<|endoftext|>` = 0, the 256 bytes, then the
    merges) learned from `texts`. The same texts in the same order give the same tokenizer."""
    tokenizer = _byte_level(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        # A trainer's special token joins the model's vocabulary, so vocab.json carries it as
        # GPT-2's does; one added afterwards would live only in tokenizer.json.
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def byte_tokenizer() -> tokenizers.Tokenizer:
    """Token id = byte value (0..255), and `<|endoftext|>` = 256: no merges at all."""
    vocab = {char: byte for byte, char in enumerate(_bytes_to_unicode())}
    vocab[END_OF_TEXT] = 256
    tokenizer = _byte_level(models.BPE(vocab=vocab, merges=[]))
    tokenizer.add_special_tokens([END_OF_TEXT])
    return tokenizer


def _bytes_to_unicode() -> list[str]:
    """GPT-2's printable stand-in character for each byte value, indexed by the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def end_of_text_id(tokenizer: tokenizers.Tokenizer) -> int:
    eot = tokenizer.token_to_id(END_OF_TEXT)
    if eot is None:
        raise ValueError(f"the tokenizer has no {END_OF_TEXT} token")
    return eot


def save_tokenizer(tokenizer: tokenizers.Tokenizer, directory: str | os.PathLike) -> None:
    """Writes tokenizer.json (what `tokenizers` and transformers' fast tokenizers load) and GPT-2's
    vocab.json + merges.txt (what GPT2Tokenizer loads) into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    tokenizer.model.save(str(directory))


def load_tokenizer(directory: str | os.PathLike) -> tokenizers.Tokenizer:
    return tokenizers.Tokenizer.from_file(str(Path(directory) / "tokenizer.json"))
