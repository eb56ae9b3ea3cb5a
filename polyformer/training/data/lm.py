"""Causal-LM batches from a token-id array: fixed windows, shuffled, sharded per host, resumable.

The ids are cut into windows of `seq_len + 1` tokens that overlap by one, so the inputs of one
window begin where the targets of the last end, and each token (but the first, and a last partial
window) is a target once per epoch.
The pipeline is a `grain.MapDataset` whose element `step` is the batch of that step, computed
from the step number alone: any step can be read directly, and an iterator over it saves and
restores its position with `get_state()` / `set_state()`.

Packing (`end_of_text` given): the corpus already lays its documents end to end, each ending in
`<|endoftext|>`, so a window is a row of packed documents with no padding. A packed batch adds
each row's segment ids (a new segment after every `<|endoftext|>`) and positions that restart at
every segment and at the row's start (a document that runs on from the previous row continues as
a new segment), and weights that drop the one pair per document boundary: a document's last
token predicting the next document's first. Attention within segments and those weights give
every document the loss it has alone.

Each host reads its block of rows of every global batch (batches.HostBatches).
"""

from __future__ import annotations

import dataclasses
import functools
import os

import grain
import jax
import numpy as np

from polyformer.training.data.batches import HostBatches, batch_iterator
from polyformer.training.data.corpus import LMCorpus, prepare_lm_corpus
from polyformer.training.data.tokenizer import save_tokenizer


def num_windows(num_tokens: int, seq_len: int) -> int:
    """Windows of `seq_len + 1` tokens, overlapping by one, that fit in `num_tokens`."""
    return max(num_tokens - 1, 0) // seq_len


def lm_dataset(
    tokens: np.ndarray, seq_len: int, batches: HostBatches, end_of_text: int | None = None
) -> grain.MapDataset:
    """Batches `{"inputs", "targets"}`, both int32 `[global_batch // process_count, seq_len]`,
    this host's rows of `batches`. Row r of both is one window of `seq_len + 1` tokens: `inputs`
    its first `seq_len`, `targets` its last. `tokens`: `[num_tokens]` ids. `end_of_text`: the
    id that ends each document; given, the rows are packed documents and the batches add
    `pack_documents`' "segment_ids", "positions" and "weights".
    """
    mine = batches.rows()
    windows = num_windows(len(tokens), seq_len)
    if windows == 0:
        raise ValueError(f"{len(tokens)} tokens do not fill one window of {seq_len + 1}")
    ds = batches.of(windows)
    if len(ds) == 0:
        raise ValueError(
            f"{windows} windows an epoch do not fill one batch of {batches.global_batch}"
        )
    return ds.map(functools.partial(_gather_windows, tokens, seq_len, mine, end_of_text))


def _gather_windows(
    tokens: np.ndarray,
    seq_len: int,
    rows: slice,
    end_of_text: int | None,
    indices: np.ndarray,
) -> dict[str, np.ndarray]:
    """`indices[rows]`: window numbers -> inputs and targets `[rows, seq_len]`, read in one
    gather (a memory map reads only the pages it touches), and packing's keys when
    `end_of_text` is given."""
    positions = indices[rows, None] * seq_len + np.arange(seq_len + 1)
    windows = np.asarray(tokens[positions], np.int32)
    batch = {"inputs": windows[:, :-1], "targets": windows[:, 1:]}
    if end_of_text is not None:
        batch.update(pack_documents(batch["inputs"], end_of_text))
    return batch


def pack_documents(inputs: np.ndarray, end_of_text: int) -> dict[str, np.ndarray]:
    """What the model and the loss need to keep the documents in rows `inputs` `[rows, length]`
    apart, a document ending at each `end_of_text`: "segment_ids" int32 `[rows, length]` (0 for
    the row's first document, +1 after each end), "positions" int32 `[rows, length]` (0 at
    each segment's first token) and "weights" float32 `[rows, length]` (0 at each
    `end_of_text`, whose target is the next document's first token)."""
    ends = inputs == end_of_text
    starts = np.zeros_like(ends)
    starts[:, 1:] = ends[:, :-1]
    index = np.arange(inputs.shape[1])
    first = np.maximum.accumulate(np.where(starts, index, 0), axis=1)
    return {
        "segment_ids": np.cumsum(starts, axis=1, dtype=np.int32),
        "positions": (index - first).astype(np.int32),
        "weights": (~ends).astype(np.float32),
    }


def check_pack(pack: object) -> None:
    """`pack` must be a bool: a 0/1 or a string from a command line is refused, not coerced."""
    if not isinstance(pack, bool):
        raise ValueError(f"data.pack must be True or False, got {pack!r}")


@dataclasses.dataclass(frozen=True)
class LMData:
    """A prepared corpus cut into windows of `seq_len`, as a trainer reads it: shuffled training
    batches from "train", evaluation batches in order from "validation". `pack`: the windows'
    documents are kept apart (see the module docstring), in training and evaluation."""

    corpus: LMCorpus
    seq_len: int
    pack: bool = False

    def __post_init__(self):
        check_pack(self.pack)

    @property
    def _end_of_text(self) -> int | None:
        return self.end_of_text_id if self.pack else None

    @property
    def vocab_size(self) -> int:
        return self.corpus.tokenizer.get_vocab_size()

    @property
    def end_of_text_id(self) -> int:
        return self.corpus.end_of_text_id

    @property
    def model_overrides(self) -> dict[str, int]:
        """The model config's vocabulary and end-of-text ids come from the corpus's tokenizer."""
        end = self.end_of_text_id
        return {"vocab_size": self.vocab_size, "bos_token_id": end, "eos_token_id": end}

    @property
    def tokens_per_example(self) -> int:
        return self.seq_len

    def save(self, directory: str | os.PathLike) -> None:
        """Writes the tokenizer files beside an exported model."""
        save_tokenizer(self.corpus.tokenizer, directory)

    def train_iterator(
        self, batch_size: int, seed: int, shard_index: int, shard_count: int
    ) -> grain.DatasetIterator:
        """This host's share, `[batch_size, seq_len]` a batch, of global batches of
        `batch_size * shard_count` windows, repeating over epochs."""
        batches = HostBatches(batch_size * shard_count, seed, None, shard_index, shard_count)
        tokens = self.corpus.tokens["train"]
        dataset = lm_dataset(tokens, self.seq_len, batches, self._end_of_text)
        return batch_iterator(dataset)

    def eval_batches(self, batch_size: int, count: int) -> list[dict[str, np.ndarray]]:
        """The first `count` (at most one epoch's) batches of "validation", this JAX process's
        `[batch_size, seq_len]` share of each: the same every time it is called."""
        batches = HostBatches(batch_size * jax.process_count(), seed=None, num_epochs=1)
        tokens = self.corpus.tokens["validation"]
        dataset = lm_dataset(tokens, self.seq_len, batches, self._end_of_text)
        return [dataset[step] for step in range(min(count, len(dataset)))]


TOKENIZERS = ("bpe", "bytes")


@dataclasses.dataclass(frozen=True)
class TextData:
    """Causal-LM input: a TFDS dataset's text feature, tokenised and cut into windows.

    Attributes:
      dataset, text_feature, data_dir: the TFDS dataset and feature (see `data_source`).
      tokenizer: "bpe" (trained on the train split, `vocab_size` tokens) or "bytes".
      seq_len: tokens per training window.
      pack: keep the documents of a window apart: each attends only to itself, with positions
        from 0, and no token predicts the next document's first (`lm.pack_documents`). The
        windows are the same (documents end to end, no padding; the corpus's last partial
        window is dropped); without it a window is one stream of text across documents.
    """

    dataset: str = "python_stdlib"
    text_feature: str = "text"
    data_dir: str | None = None
    tokenizer: str = "bpe"
    vocab_size: int = 4096
    seq_len: int = 128
    pack: bool = False

    def __post_init__(self):
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"data.tokenizer must be one of {TOKENIZERS}, got {self.tokenizer!r}")
        if self.seq_len < 1 or self.vocab_size < 1:
            raise ValueError(
                f"data.seq_len and data.vocab_size must be positive, got {self.seq_len}, "
                f"{self.vocab_size}"
            )
        check_pack(self.pack)

    def load(self) -> LMData:
        """The corpus (built, tokenised and cached on first use) as `LMData`."""
        corpus = prepare_lm_corpus(
            self.dataset,
            vocab_size=self.vocab_size if self.tokenizer == "bpe" else None,
            text_key=self.text_feature,
            data_dir=self.data_dir,
        )
        return LMData(corpus, self.seq_len, self.pack)
