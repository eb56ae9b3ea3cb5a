"""Random examples of fixed shapes: a run's inputs known without reading any data.

`polyformer compile` needs only the shapes and dtypes of a batch, and a step-time benchmark only
needs arrays of those shapes; neither should wait for a corpus to be built. A data config that
can say what its examples look like without loading them has a `synthetic()` method returning
a `SyntheticData`; `SyntheticData` is itself a data config (its `synthetic()` is itself).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np

from polyformer.training.data.arrays import ArrayData


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """One batch key: `shape` is one example's (no batch axis). Integer arrays are drawn from
    `[low, high)` (`low=1, high=2`: all ones, as for a mask), floating ones from a standard
    normal."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "int32"
    high: int = 2
    low: int = 0

    def __post_init__(self):
        kind = np.dtype(self.dtype).kind
        if kind not in "iuf":
            raise ValueError(f"{self.name}: dtype must be an integer or float type, got {kind!r}")
        if kind in "iu" and self.high <= self.low:
            raise ValueError(f"{self.name}: need low < high, got [{self.low}, {self.high})")

    def draw(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """`[count, *shape]` random values."""
        shape = (count, *self.shape)
        if np.dtype(self.dtype).kind == "f":
            return rng.standard_normal(shape).astype(self.dtype)
        return rng.integers(self.low, self.high, shape).astype(self.dtype)


class Example(NamedTuple):
    """What one example of an objective looks like: its batch keys and what it counts for in
    the throughput (tokens, patches or samples)."""

    arrays: tuple[ArraySpec, ...]
    tokens: int


@dataclasses.dataclass(frozen=True)
class SyntheticData:
    """A data config of random examples.

    Attributes:
      arrays: the batch keys the objective reads.
      tokens_per_example: what one example counts for in the throughput.
      model_overrides: (field, value) pairs the model config takes from the data.
      train_examples, eval_examples: how many random examples `load()` makes.
      seed: the draw's seed.
    """

    arrays: tuple[ArraySpec, ...]
    tokens_per_example: int
    model_overrides: tuple[tuple[str, Any], ...] = ()
    train_examples: int = 256
    eval_examples: int = 64
    seed: int = 0

    def __post_init__(self):
        names = [a.name for a in self.arrays]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"arrays need distinct names, at least one; got {names}")
        if min(self.tokens_per_example, self.train_examples, self.eval_examples) < 1:
            raise ValueError("tokens_per_example, train_examples and eval_examples must be >= 1")

    def synthetic(self) -> SyntheticData:
        return self

    def load(self) -> ArrayData:
        rng = np.random.default_rng(self.seed)
        train = {a.name: a.draw(self.train_examples, rng) for a in self.arrays}
        held_out = {a.name: a.draw(self.eval_examples, rng) for a in self.arrays}
        return ArrayData(
            train, held_out, self.tokens_per_example, model_overrides=dict(self.model_overrides)
        )


def token_windows(seq_len: int, vocab_size: int, **kwargs) -> SyntheticData:
    """Causal-LM batches of random tokens: "inputs" and "targets" `[seq_len]` int32."""
    windows = tuple(ArraySpec(k, (seq_len,), "int32", vocab_size) for k in ("inputs", "targets"))
    return SyntheticData(windows, seq_len, (("vocab_size", vocab_size),), **kwargs)
