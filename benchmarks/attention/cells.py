"""What the attention benchmark measures: one `Cell` per row of the report."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np

BATCH, HEADS, HEAD_DIM = 1, 4, 64

FULL_LENGTHS = (512, 1024, 2048, 3072, 4096, 8192, 16384)
QUICK_LENGTHS = (512, 1024, 2048, 4096, 8192)
FULL_BACKWARD_LENGTHS = (1024, 4096, 16384)
QUICK_BACKWARD_LENGTHS = (1024, 4096)

# Row names the targets refer to.
DENSE = "Dense"
DPA = "jax dot_product_attention (xla)"
TORCH = "torch SDPA (CPU)"
BAND = "Band ±256"
LONGFORMER = "Longformer (w 512, global [0])"
BIGBIRD = "BigBird (b 64, w 3, g 2, r 3)"
FAVOR = "FAVOR+ m=256"
FAVOR_CAUSAL = "FAVOR+ m=256 causal"
BWD = " fwd+bwd"


@dataclasses.dataclass(frozen=True)
class Built:
    """What a factory returns.

    fn: the attention function; JAX cells take q, k, v `[batch, length, heads, head_dim]`, torch
      cells take them as `[batch, heads, length, head_dim]` torch tensors.
    mask: the boolean `[length, length]` the kernel computes exactly (None: every key), for the
      accuracy check against a float64 reference; exact=False for approximations (FAVOR+),
      whose relative error is reported instead.
    """

    fn: Callable
    mask: Callable[[int], np.ndarray] | None = None
    exact: bool = True


@dataclasses.dataclass(frozen=True)
class Cell:
    """One row: a name and a factory, plus what the runner needs to schedule it.

    backward: time the gradient of sum(out * ct) with respect to q, k, v instead of the forward.
    quadratic: time grows like length^2 (orders cheap cells first, predicts skips).
    """

    name: str
    factory: Callable[[], Built]
    framework: str = "jax"  # "jax" or "torch"
    backward: bool = False
    quadratic: bool = False

    @property
    def memory_measure(self) -> str:
        return "xla-static" if self.framework == "jax" else "rss-hwm"


def dense() -> Built:
    from polyformer import attention as A

    kernel = A.Dense()
    return Built(lambda q, k, v: kernel(q, k, v))


def sparse(make_pattern: Callable) -> Callable[[], Built]:
    """Factory for Sparse(pattern), `make_pattern(A.patterns)` building the pattern."""

    def factory() -> Built:
        from polyformer import attention as A

        pattern = make_pattern(A.patterns)
        kernel = A.Sparse(pattern, block=64)
        return Built(lambda q, k, v: kernel(q, k, v), lambda n: pattern.mask(n, n))

    return factory


def favor(causal: bool) -> Callable[[], Built]:
    def factory() -> Built:
        from polyformer import attention as A

        kernel = A.Favor(num_features=256)
        causal_mask = (lambda n: np.tril(np.ones((n, n), bool))) if causal else None
        return Built(lambda q, k, v: kernel(q, k, v, causal=causal), causal_mask, exact=False)

    return factory


def longformer(patterns):
    return patterns.longformer(512, [0])


def bigbird(patterns):
    key = jax.random.key(0)
    return patterns.bigbird(block=64, window=3, global_blocks=2, random_blocks=3, key=key)


def dot_product_attention() -> Built:
    return Built(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla"))


def torch_sdpa() -> Built:
    import torch

    def fn(q, k, v):
        with torch.no_grad():
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    return Built(fn)


def cells(full: bool) -> list[Cell]:
    """Every row of the report, forward cells first, then forward + backward cells."""
    band = sparse(lambda patterns: patterns.band(256))
    long_former = sparse(longformer)
    big_bird = sparse(bigbird)
    forward = [
        Cell(FAVOR, favor(causal=False)),
        Cell(FAVOR_CAUSAL, favor(causal=True)),
        Cell(BIGBIRD, big_bird),
        Cell(BAND, band),
        Cell(LONGFORMER, long_former),
        Cell(DENSE, dense, quadratic=True),
        Cell(TORCH, torch_sdpa, framework="torch", quadratic=True),
        Cell(DPA, dot_product_attention, quadratic=True),
    ]
    backward = [
        Cell(FAVOR + BWD, favor(causal=False), backward=True),
        Cell(FAVOR_CAUSAL + BWD, favor(causal=True), backward=True),
        Cell(DENSE + BWD, dense, backward=True, quadratic=True),
    ]
    if full:
        backward += [
            Cell(BIGBIRD + BWD, big_bird, backward=True),
            Cell(BAND + BWD, band, backward=True),
            Cell(DPA + BWD, dot_product_attention, backward=True, quadratic=True),
        ]
    return forward + backward
