"""A dataset's text as one token-id array per split, computed once and cached on disk.

Documents are tokenized in the source's order and concatenated, each followed by
`<|endoftext|>`, into a flat file of uint16 (uint32 for vocabularies over 65,536) next to the
dataset. Reading it back is a memory map, so every epoch after the first costs nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import tokenizers

from polyformer.training.data import tokenizer as tok
from polyformer.training.data.sources import data_source, texts

# Documents per `encode_batch` call: enough to keep the tokenizer's threads busy, few enough
# that a batch of long documents stays small in memory.
_DOCS_PER_BATCH = 64


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def token_ids(
    source: Sequence[dict[str, Any]],
    tokenizer: tokenizers.Tokenizer,
    path: str | os.PathLike,
    text_key: str = "text",
) -> np.ndarray:
    """`[num_tokens]` ids of every document of `source`, in order, each followed by
    `<|endoftext|>`; read (memory-mapped) from `path` when it exists, else computed and written
    there first. The file is written under a temporary name and renamed, so hosts that share a
    filesystem and race to build it never read a partial file."""
    path = Path(path)
    dtype = token_dtype(tokenizer.get_vocab_size())
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = _staging_name(path)
        with open(staging, "wb") as f:
            _write_tokens(f, texts(source, text_key), tokenizer, dtype)
        os.replace(staging, path)
    if path.stat().st_size == 0:
        raise ValueError(f"{path} holds no tokens: the split has no documents")
    return np.memmap(path, dtype=dtype, mode="r")


def _write_tokens(
    file: BinaryIO, documents: Iterable[str], tokenizer: tokenizers.Tokenizer, dtype: np.dtype
) -> None:
    eot = tok.end_of_text_id(tokenizer)
    batch = []
    for text in documents:
        batch.append(text)
        if len(batch) == _DOCS_PER_BATCH:
            _write_batch(file, batch, tokenizer, eot, dtype)
            batch = []
    if batch:
        _write_batch(file, batch, tokenizer, eot, dtype)


def _write_batch(
    file: BinaryIO, batch: list[str], tokenizer: tokenizers.Tokenizer, eot: int, dtype: np.dtype
) -> None:
    for encoding in tokenizer.encode_batch(batch):
        np.asarray([*encoding.ids, eot], dtype).tofile(file)


@dataclasses.dataclass(frozen=True)
class LMCorpus:
    """A tokenizer and, per split, the `[num_tokens]` ids of that split's documents."""

    tokenizer: tokenizers.Tokenizer
    tokenizer_dir: Path
    tokens: dict[str, np.ndarray]

    @property
    def end_of_text_id(self) -> int:
        return tok.end_of_text_id(self.tokenizer)


def prepare_lm_corpus(
    name: str = "python_stdlib",
    *,
    splits: Sequence[str] = ("train", "validation"),
    vocab_size: int | None = 4096,
    text_key: str = "text",
    data_dir: str | os.PathLike | None = None,
    **builder_kwargs: Any,
) -> LMCorpus:
    """Everything a causal LM needs from TFDS dataset `name`, made once and cached next to it.

    The tokenizer is a byte-level BPE of `vocab_size` tokens trained on the "train" split
    (`vocab_size=None`: plain bytes, 257 tokens), stored in `<dataset dir>/tokenizers/`; the token
    ids of each split go to `<dataset dir>/tokens/`, in files named after a hash of the tokenizer,
    so a different tokenizer never reads stale ids. `builder_kwargs` go to `tfds.builder`.
    """
    sources = {split: data_source(name, split, data_dir, **builder_kwargs) for split in splits}
    dataset_dir = Path(next(iter(sources.values())).dataset_info.data_dir)
    tokenizer_dir = dataset_dir / "tokenizers" / (f"bpe{vocab_size}" if vocab_size else "bytes")
    if not (tokenizer_dir / "tokenizer.json").exists():
        train = sources.get("train")
        if train is None:
            train = data_source(name, "train", data_dir, **builder_kwargs)
        _save_atomically(_make_tokenizer(train, vocab_size, text_key), tokenizer_dir)
    tokenizer = tok.load_tokenizer(tokenizer_dir)
    fingerprint = hashlib.sha256(tokenizer.to_str().encode()).hexdigest()[:16]
    tokens = {
        split: token_ids(
            source,
            tokenizer,
            dataset_dir / "tokens" / f"{_slug(split)}-{_slug(text_key)}-{fingerprint}.bin",
            text_key,
        )
        for split, source in sources.items()
    }
    return LMCorpus(tokenizer, tokenizer_dir, tokens)


def _make_tokenizer(train_source, vocab_size: int | None, text_key: str) -> tokenizers.Tokenizer:
    if vocab_size is None:
        return tok.byte_tokenizer()
    return tok.train_bpe(texts(train_source, text_key), vocab_size)


def _save_atomically(tokenizer: tokenizers.Tokenizer, directory: Path) -> None:
    """Saves into a fresh directory renamed into place: a host racing another keeps the winner's
    (identical, since training is deterministic) files."""
    staging = _staging_name(directory)
    tok.save_tokenizer(tokenizer, staging)
    try:
        staging.rename(directory)
    except OSError:
        shutil.rmtree(staging)
        if not (directory / "tokenizer.json").exists():
            raise


def _staging_name(path: Path) -> Path:
    """A name beside `path` that no other process uses, to write under before renaming."""
    return path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")


def _slug(name: str) -> str:
    """A split name such as "train[:10%]" as a safe file-name part."""
    return re.sub(r"[^\w.-]+", "_", str(name))
