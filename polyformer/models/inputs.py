"""Checks of what enters a model or a pipeline that JAX itself would not refuse (token ids
outside their embedding table, a tokenizer larger than the model's vocabulary), and tokenizer
files read so that a damaged one is named."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tokenizers
from jax.experimental import checkify
from tokenizers import models


def pad_rows(rows: Sequence, length: int, value: Any, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """`rows` (sequences of at most `length` items) as one `[len(rows), length]` array of `dtype`
    filled out with `value`, and its int32 mask (1 where a row has an item)."""
    padded = np.full((len(rows), length), value, dtype)
    mask = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        padded[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return padded, mask


def check_ids(ids: jax.Array, size: int, name: str) -> None:
    """Raises ValueError unless every integer of `ids` (any shape) indexes a table of `size` rows.

    JAX gathers do not raise where torch's do: an id >= size reads NaN and -1 the last row, a
    wrong answer without a word. Concrete ids are checked here; traced ones (under jit) by
    `checkify.debug_check`, a no-op unless the caller asks for it:
    `err, out = checkify.checkify(jax.jit(fn))(...)`, then `err.throw()`.
    """
    if isinstance(ids, jax.core.Tracer):
        checkify.debug_check(
            jnp.all((ids >= 0) & (ids < size)),
            f"{name} hold ids from {{low}} to {{high}}; expected 0 to {size - 1}",
            low=jnp.min(ids),
            high=jnp.max(ids),
        )
        return
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= size):
        raise ValueError(
            f"{name} hold ids from {ids.min()} to {ids.max()}; expected 0 to {size - 1} "
            f"(the model's table has {size} rows)"
        )


def check_vocabulary(tokenizer_size: int, vocab_size: int, directory: Any) -> None:
    """Raises ValueError when a tokenizer of `tokenizer_size` ids could give ids that the model's
    `vocab_size`-row embedding does not hold (it would read NaN, not raise)."""
    if tokenizer_size > vocab_size:
        raise ValueError(
            f"{directory}: the tokenizer has {tokenizer_size} tokens but the model's vocab_size is "
            f"{vocab_size}; use the tokenizer the model was trained with"
        )


def tokenizer_from_file(path: str | os.PathLike) -> tokenizers.Tokenizer:
    """tokenizers.Tokenizer.from_file, with a damaged file named in a ValueError."""
    try:
        return tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # the tokenizers library raises a bare Exception
        raise ValueError(f"{path} is not a tokenizer.json the tokenizers library reads: {e}") from e


def bpe_from_files(vocab: str | os.PathLike, merges: str | os.PathLike, **options) -> models.BPE:
    """models.BPE.from_file (options: its keyword arguments), with damaged files named."""
    try:
        return models.BPE.from_file(str(vocab), str(merges), **options)
    except Exception as e:  # the tokenizers library raises a bare Exception
        raise ValueError(
            f"{vocab} and {merges} are not a BPE vocabulary (a JSON object, token -> id) and its "
            f"merges: {e}"
        ) from e
