"""Sparse attention patterns: immutable values built from atoms and composed with `|` and `&`.

    band(256) | global_tokens([0])                        # Longformer, attention_window=512
    block_local(64, 3) | global_tokens(...) | random_blocks(3, key, 64)    # BigBird ITC

The frame. A pattern is a predicate on (query, key) pairs placed in one shared frame, the key
sequence (positions 0 .. k_len - 1). Query i of a q_len-long query sequence sits at frame position
p = i + k_len - q_len: the end alignment of the causal rule in base.py, so the last c queries of a
pass (a prefill chunk, a decode step against a cache) see exactly the rows they see in the full
pass. Whatever depends on the length (negative global indices, random block tables) is resolved
against k_len. When q_len > k_len the first queries sit at negative positions; they take part in
the relative atoms (band, dilated, block_local) only.

Every pattern has three views:

    mask(q_len, k_len)                   bool [q_len, k_len], the slow and obvious reference
    allows(q_idx, k_idx, q_len, k_len)   the element predicate on broadcastable integer index
                                         arrays, numpy (host) or jax (traced) alike
    block_mask(q_len, k_len, block)      bool [ceil(q_len / block), ceil(k_len / block)]: True for
                                         every block holding an allowed pair; computed per atom
                                         from block intervals, never an L x L array; it may
                                         over-approximate (`&` of blocks), never under-approximate
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from collections.abc import Callable, Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

# Membership in more runs than this is looked up in a table instead of compared run by run.
_MAX_RUNS = 8


def _namespace(*arrays):
    """jnp when any input is a jax array (a traced decode position), numpy otherwise."""
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be an integer >= {minimum}, got the bool {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(
            f"{name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__})"
        ) from None
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def _check_lengths(q_len: int, k_len: int) -> None:
    _check_int("q_len", q_len, 1)
    _check_int("k_len", k_len, 1)


def _gap(a_lo, a_hi, b_lo, b_hi):
    """Distance between integer intervals [a_lo, a_hi] and [b_lo, b_hi] (0 when they overlap)."""
    return np.maximum(0, np.maximum(b_lo - a_hi, a_lo - b_hi))


class Pattern:
    """Base of every pattern. Subclasses are frozen dataclasses implementing `_allows` and
    `_block_mask` in frame positions (see the module docstring)."""

    def __or__(self, other: Pattern) -> Pattern:
        if not isinstance(other, Pattern):
            return NotImplemented
        return Union(_flatten(Union, (self, other)))

    def __and__(self, other: Pattern) -> Pattern:
        if not isinstance(other, Pattern):
            return NotImplemented
        return Intersection(_flatten(Intersection, (self, other)))

    def allows(self, q_idx, k_idx, q_len: int, k_len: int):
        """Element predicate: may query `q_idx` (index into the queries) see key `k_idx`?

        q_idx and k_idx are integer arrays that broadcast together (numpy or jax, traced or not);
        returns a boolean array of their broadcast shape, of the same kind.
        """
        _check_lengths(q_len, k_len)
        return self._allows(q_idx + (k_len - q_len), k_idx, k_len)

    def mask(self, q_len: int, k_len: int) -> np.ndarray:
        """The reference: bool [q_len, k_len], True where query i may attend to key j."""
        rows = np.arange(q_len)[:, None]
        cols = np.arange(k_len)[None, :]
        return np.broadcast_to(self.allows(rows, cols, q_len, k_len), (q_len, k_len)).copy()

    def block_mask(self, q_len: int, k_len: int, block: int) -> np.ndarray:
        """bool [ceil(q_len / block), ceil(k_len / block)]: block (a, b) is True when some query
        in query block a may see some key in key block b. Never under-approximates `mask`."""
        _check_lengths(q_len, k_len)
        block = _check_int("block", block, 1)
        q_lo, q_hi = _block_spans(q_len, block)
        k_lo, k_hi = _block_spans(k_len, block)
        offset = k_len - q_len
        kept = self._block_mask(
            (q_lo + offset)[:, None], (q_hi + offset)[:, None], k_lo[None, :], k_hi[None, :], k_len
        )
        return np.broadcast_to(kept, (len(q_lo), len(k_lo))).copy()

    def _allows(self, p, j, k_len: int):
        raise NotImplementedError

    def _block_mask(self, q_lo, q_hi, k_lo, k_hi, k_len: int) -> np.ndarray:
        """q_lo/q_hi `[n_q_blocks, 1]`: frame positions spanned by each query block (inclusive);
        k_lo/k_hi `[1, n_k_blocks]` likewise for keys. Returns bool broadcastable to both."""
        raise NotImplementedError


def _block_spans(length: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last index (inclusive) of each block of a `length`-long axis; the last block
    stops at the end of the axis, not at the block boundary."""
    lo = np.arange(0, length, block)
    return lo, np.minimum(lo + block, length) - 1


def _flatten(kind: type, parts: tuple[Pattern, ...]) -> tuple[Pattern, ...]:
    """Nested unions (or intersections) as one flat tuple, so `a | b | c` is one Union."""
    flat = []
    for part in parts:
        flat.extend(part.parts if isinstance(part, kind) else (part,))
    return tuple(flat)


@dataclasses.dataclass(frozen=True)
class _Combination(Pattern):
    """Parts whose allowed pairs and block masks are folded with one logical operator: `_pairs`
    on `_allows`'s arrays, `_blocks` on the numpy block masks."""

    parts: tuple[Pattern, ...]
    _pairs: ClassVar[Callable]
    _blocks: ClassVar[Callable]

    def _allows(self, p, j, k_len):
        return functools.reduce(self._pairs, (part._allows(p, j, k_len) for part in self.parts))

    def _block_mask(self, q_lo, q_hi, k_lo, k_hi, k_len):
        masks = (part._block_mask(q_lo, q_hi, k_lo, k_hi, k_len) for part in self.parts)
        return functools.reduce(self._blocks, masks)


@dataclasses.dataclass(frozen=True)
class Union(_Combination):
    """A key is allowed when any part allows it."""

    _pairs: ClassVar[Callable] = operator.or_
    _blocks: ClassVar[Callable] = np.logical_or


@dataclasses.dataclass(frozen=True)
class Intersection(_Combination):
    """A key is allowed when every part allows it. Its block mask is the `and` of the parts'
    block masks, which can keep a block where the parts' allowed pairs do not meet."""

    _pairs: ClassVar[Callable] = operator.and_
    _blocks: ClassVar[Callable] = np.logical_and


@dataclasses.dataclass(frozen=True)
class Band(Pattern):
    """Keys at frame distance |p - j| <= width (width on each side)."""

    width: int

    def __post_init__(self):
        _check_int("band width", self.width, 0)

    def _allows(self, p, j, k_len):
        return abs(p - j) <= self.width

    def _block_mask(self, q_lo, q_hi, k_lo, k_hi, k_len):
        return _gap(q_lo, q_hi, k_lo, k_hi) <= self.width


@dataclasses.dataclass(frozen=True)
class Dilated(Pattern):
    """Keys with |p - j| <= width * dilation and (p - j) % dilation == 0: width keys on each
    side, spaced dilation apart (plus the key at the query's own position)."""

    width: int
    dilation: int

    def __post_init__(self):
        _check_int("dilated width", self.width, 0)
        _check_int("dilation", self.dilation, 1)

    def _allows(self, p, j, k_len):
        d = p - j
        return (abs(d) <= self.width * self.dilation) & (d % self.dilation == 0)

    def _block_mask(self, q_lo, q_hi, k_lo, k_hi, k_len):
        # The offsets p - j inside a block pair fill the whole range [q_lo - k_hi, q_hi - k_lo];
        # the pair is kept when that range, cut to the reach, holds a multiple of the dilation.
        reach = self.width * self.dilation
        lo = np.maximum(q_lo - k_hi, -reach)
        hi = np.minimum(q_hi - k_lo, reach)
        return (lo <= hi) & ((hi // self.dilation) * self.dilation >= lo)


@dataclasses.dataclass(frozen=True)
class BlockLocal(Pattern):
    """Frame block p // block sees key blocks j // block at most window // 2 blocks away."""

    block: int
    window: int = 1

    def __post_init__(self):
        _check_int("block", self.block, 1)
        _check_int("window", self.window, 1)
        if self.window % 2 == 0:
            raise ValueError(
                f"window must be an odd number of blocks (1 = the diagonal block, 3 = BigBird's "
                f"3-block window), got {self.window}"
            )

    def _allows(self, p, j, k_len):
        return abs(p // self.block - j // self.block) <= self.window // 2

    def _block_mask(self, q_lo, q_hi, k_lo, k_hi, k_len):
        b = self.block
        return _gap(q_lo // b, q_hi // b, k_lo // b, k_hi // b) <= self.window // 2


@dataclasses.dataclass(frozen=True)
class GlobalTokens(Pattern):
    """Global tokens attend to every key and every query attends to them.

    The tokens are the first `first` positions plus `indices` (negative ones count from the end);
    both are resolved against k_len, and positions outside the sequence are dropped, so one
    pattern serves every length.
    """

    indices: tuple[int, ...] = ()
    first: int = 0

    def __post_init__(self):
        _check_int("first", self.first, 0)
        for i in self.indices:
            if isinstance(i, bool | np.bool_) or not isinstance(i, int | np.integer):
                raise ValueError(f"global token indices must be integers, got {i!r}")

    def positions(self, length: int) -> np.ndarray:
        """Sorted, distinct frame positions of the global tokens for a `length`-long frame."""
        idx = np.asarray(self.indices, np.int64)
        idx = np.where(idx < 0, idx + length, idx)
        idx = idx[(idx >= 0) & (idx < length)]
        return np.union1d(np.arange(min(self.first, length)), idx)

    def _allows(self, p, j, k_len):
        xp = _namespace(p, j)
        positions = self.positions(k_len)
        return _member(p, positions, k_len, xp) | _member(j, positions, k_len, xp)

    def _block_mask(self, q_lo, q_hi, k_lo, k_hi, k_len):
        positions = self.positions(k_len)
        return _any_in(positions, q_lo, q_hi) | _any_in(positions, k_lo, k_hi)


def _member(x, positions: np.ndarray, length: int, xp):
    """x in positions (sorted, within [0, length)), elementwise, as a few range tests."""
    if len(positions) == 0:
        return xp.zeros(np.shape(x), bool)
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    starts = positions[np.r_[0, breaks]]
    stops = positions[np.r_[breaks - 1, len(positions) - 1]] + 1
    if len(starts) > _MAX_RUNS:
        table = np.zeros(length + 1, bool)
        table[positions] = True
        return xp.asarray(table)[xp.where((x >= 0) & (x < length), x, length)]
    runs = ((x >= lo) & (x < hi) for lo, hi in zip(starts.tolist(), stops.tolist(), strict=True))
    return functools.reduce(operator.or_, runs)


def _any_in(positions: np.ndarray, lo, hi) -> np.ndarray:
    """Whether any of the sorted `positions` lies in [lo, hi], elementwise over lo and hi."""
    return np.searchsorted(positions, hi, side="right") > np.searchsorted(positions, lo, "left")


@dataclasses.dataclass(frozen=True)
class RandomBlocks(Pattern):
    """Each frame block of `block` positions attends `n` distinct key blocks drawn at random
    (all of them when n >= the number of key blocks).

    The table is a pure function of (seed, n, block, k_len), drawn on the host with numpy, so one
    seed gives one pattern in training, in evaluation, eagerly and under jit. Build it with
    `random_blocks`, which turns a jax PRNG key into the seed. Random blocks may coincide with
    blocks that other atoms of a union keep already.
    """

    n: int
    seed: tuple[int, ...]
    block: int = 64

    def __post_init__(self):
        _check_int("n (random blocks per query block)", self.n, 0)
        _check_int("block", self.block, 1)
        if not self.seed or not all(isinstance(s, int) for s in self.seed):
            raise ValueError(f"seed must be a non-empty tuple of ints, got {self.seed!r}")

    def table(self, k_len: int) -> np.ndarray:
        """int [ceil(k_len / block), min(n, ceil(k_len / block))]: the key blocks of each frame
        block, sorted, no duplicates within a row."""
        _check_int("k_len", k_len, 1)
        return _random_table(self.seed, self.n, self.block, k_len)

    def _allows(self, p, j, k_len):
        xp = _namespace(p, j)
        table = self.table(k_len)
        row = xp.asarray(table)[xp.clip(p // self.block, 0, table.shape[0] - 1)]
        hit = (row == (j // self.block)[..., None]).any(axis=-1)
        return hit & (p >= 0)

    def _block_mask(self, q_lo, q_hi, k_lo, k_hi, k_len):
        table = self.table(k_len)
        b = self.block
        q_lo, q_hi, k_lo, k_hi = q_lo[:, 0], q_hi[:, 0], k_lo[0], k_hi[0]
        # Every (query block, frame block it spans) pair; queries before the frame have none.
        first = np.maximum(q_lo, 0) // b
        spans = np.maximum(q_hi // b - first + 1, 0)
        rows = np.repeat(np.arange(len(q_lo)), spans)
        frame_blocks = np.repeat(first - np.cumsum(spans) + spans, spans) + np.arange(spans.sum())
        # Each drawn key block covers key blocks [start, stop] of this block size: mark the range
        # with +1 / -1 in a difference array, whose running sum along a row counts the cover.
        drawn = table[frame_blocks]  # [pairs, n]
        start = np.searchsorted(k_lo, drawn * b, side="right") - 1
        stop = np.searchsorted(k_lo, np.minimum(drawn * b + b, k_len) - 1, side="right")
        cover = np.zeros((len(q_lo), len(k_lo) + 1), np.int32)
        np.add.at(cover, (rows[:, None], start), 1)
        np.add.at(cover, (rows[:, None], stop), -1)
        return cover.cumsum(axis=1)[:, :-1] > 0


@functools.lru_cache(maxsize=64)
def _random_table(seed: tuple[int, ...], n: int, block: int, k_len: int) -> np.ndarray:
    n_blocks = math.ceil(k_len / block)
    n = min(n, n_blocks)
    rng = np.random.default_rng([*seed, n, block, k_len])
    # Floyd's sampling, vectorised over rows: n distinct, uniformly drawn blocks per row, in
    # O(rows x n^2) time instead of a permutation of every block per row.
    table = np.empty((n_blocks, n), np.int64)
    for col, top in enumerate(range(n_blocks - n, n_blocks)):
        draw = rng.integers(0, top + 1, n_blocks)
        taken = (table[:, :col] == draw[:, None]).any(axis=1)
        table[:, col] = np.where(taken, top, draw)
    table.sort(axis=1)
    table.flags.writeable = False  # cached: shared by every caller
    return table


def _seed_from_key(key) -> tuple[int, ...]:
    """A jax PRNG key (typed, or a legacy uint32 [2]) as a tuple of ints, on the host."""
    if isinstance(key, jax.core.Tracer):
        raise ValueError(
            "random_blocks needs a concrete PRNG key: build the pattern outside jit (the block "
            "table is planned on the host), not from a traced key"
        )
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"random_blocks needs a single PRNG key, got shape {key.shape}")
        key = jax.random.key_data(key)
    data = np.asarray(key) if isinstance(key, jax.Array | np.ndarray) else None
    if data is None or data.dtype != np.uint32 or data.ndim != 1 or data.size == 0:
        raise ValueError(
            "random_blocks needs a jax PRNG key (jax.random.key(0) or jax.random.PRNGKey(0)), "
            f"got {key!r}"
        )
    return tuple(int(x) for x in data)


def band(width: int) -> Band:
    """Keys within `width` positions on each side: |i - j| <= width in the frame.

    Longformer's attention_window=512 is band(256).
    """
    return Band(width)


def dilated(width: int, dilation: int) -> Dilated:
    """`width` keys on each side, `dilation` positions apart, plus the query's own position."""
    return Dilated(width, dilation)


def block_local(block: int, window: int = 1) -> BlockLocal:
    """Query block qb sees key blocks kb with |qb - kb| <= window // 2; window=3 is BigBird's."""
    return BlockLocal(block, window)


def global_tokens(indices_or_count: int | Sequence[int]) -> GlobalTokens:
    """Global tokens: an int n for the first n tokens, or a sequence of token indices (negative
    ones from the end of the sequence, resolved per length)."""
    return _global(indices_or_count)


def _global(indices_or_count) -> GlobalTokens:
    # Shared with the presets, whose argument named global_tokens hides the function above.
    if isinstance(indices_or_count, Sequence | np.ndarray) and not isinstance(
        indices_or_count, str
    ):
        return GlobalTokens(indices=tuple(np.asarray(indices_or_count).tolist()))
    if isinstance(indices_or_count, bool | np.bool_) or not isinstance(
        indices_or_count, int | np.integer
    ):
        raise ValueError(
            "global tokens are an int (the first n tokens) or a sequence of token indices, "
            f"got {indices_or_count!r}"
        )
    return GlobalTokens(first=int(indices_or_count))


def random_blocks(n: int, key: jax.Array, block: int = 64) -> RandomBlocks:
    """Each query block of `block` tokens attends `n` distinct random key blocks drawn from the
    explicit PRNG `key` (turned into a host seed here, so call this outside jit)."""
    return RandomBlocks(n, _seed_from_key(key), block)


def longformer(window: int, global_tokens: int | Sequence[int] = (0,)) -> Pattern:
    """Longformer: band(window // 2) | global_tokens(global_tokens).

    `window` is Hugging Face's attention_window (even; 512 for longformer-base-4096); the default
    global token is the first (CLS).
    """
    window = _check_int("window", window, 2)
    if window % 2:
        raise ValueError(f"window (attention_window) must be even, got {window}")
    return Band(window // 2) | _global(global_tokens)


def bigbird(
    block: int = 64,
    window: int = 3,
    global_blocks: int = 2,
    random_blocks: int = 3,
    key: jax.Array | None = None,
) -> Pattern:
    """BigBird (ITC defaults): block_local(block, window) | global_tokens(the first
    ceil(g / 2) and last floor(g / 2) blocks; g=2 is the first and the last block) |
    random_blocks(random_blocks, key, block), the last left out when random_blocks is 0."""
    block = _check_int("block", block, 1)
    g = _check_int("global_blocks", global_blocks, 0)
    n_random = _check_int("random_blocks", random_blocks, 0)
    first, last = math.ceil(g / 2) * block, (g // 2) * block
    pattern = BlockLocal(block, window) | _global([*range(first), *range(-last, 0)])
    if n_random == 0:
        return pattern
    if key is None:
        raise ValueError("bigbird with random_blocks > 0 needs a PRNG key (key=jax.random.key(0))")
    return pattern | RandomBlocks(n_random, _seed_from_key(key), block)
