"""FAVOR+ (Performer) linear attention with positive orthogonal random features.

softmax(q k^T * scale) v is approximated by replacing exp(q.k) with phi(q).phi(k), where phi maps
a vector to m positive random features; the attention then costs O(length * m * head_dim) instead
of O(q_length * k_length * head_dim). With q and k each multiplied by sqrt(scale) and w_1..w_m the
rows of the random projection,

    phi(x)_r = exp(w_r.x - |x|^2 / 2)        E_w[phi(q).phi(k)] = m exp(q.k).

Stabilisers. exp(w.x) overflows float32 for large x, so every feature is computed relative to a
shift, and every shift either cancels exactly or is local to one position:

* a query row is computed as exp(w.q - max_r w.q) + eps. Its shift and |q|^2 / 2 are constants of
  that query and cancel in the normalisation; eps keeps every feature, and so the normaliser,
  positive.
* a key row is split into a normalised row psi(k) = exp(w.k - max_r w.k) + eps, in (0, 1 + eps],
  and a log-scale a(k) = max_r w.k - |k|^2 / 2, so phi(k) = exp(a(k)) psi(k). Both depend on that
  key alone (not on the other keys, as the official implementation's key max over all positions
  does), so a streaming decoder reproduces them exactly.
* the key log-scales are combined as online softmax combines logits: each query weighs its keys by
  exp(a(k) - ref) with ref the largest log-scale among the keys it can see (a running maximum in
  causal mode, so never a future key). ref is a common factor of a query's numerator and
  denominator, so it cancels exactly, and every weight is at most 1, so nothing overflows.

Causal attention runs over chunks of `chunk` positions: inside a chunk, the exact masked products
phi(q) phi(k)^T; across chunks, a running state (sum of weighted phi(k) v^T `[m, head_dim]` and of
phi(k) `[m]`, relative to the running shift) carried by `lax.scan`. The chunk step is rematerialised
in the backward pass, which therefore keeps only the inputs and one state per chunk: memory is
linear in length, and no `[length, m, head_dim]` tensor exists. Decoding is the same chunk step
applied to a cache that holds that state.

All feature maps, exponentials and sums run in float32 whatever the input dtype; the output has
q's dtype.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from polyformer.attention import base

MAX_PROBABILITIES = 2**28
"""The most elements `Favor.probabilities` forms (1 GiB in float32): the [q_length, k_length]
matrices are what FAVOR+ exists to avoid, and beyond this they no longer fit beside a model."""

State = tuple[jax.Array, jax.Array, jax.Array, jax.Array]
"""(kv `[batch, kv_heads, m, head_dim]`, k_sum `[batch, kv_heads, m]`, shift `[batch, kv_heads]`,
segment `[batch]`: the id of the segment whose keys the sums hold)."""


@flax.struct.dataclass
class FavorCache:
    """The running causal state of everything decoded so far; its size does not grow with length.

    kv `[batch, kv_heads, num_features, head_dim]`: sum over keys of exp(a(k) - shift) psi(k) v^T.
    k_sum `[batch, kv_heads, num_features]`: sum over keys of exp(a(k) - shift) psi(k).
    shift `[batch, kv_heads]`: the largest key log-scale a(k) seen so far (-inf before the first
    key).
    segment `[batch]`: the segment id of the last key; the sums hold that segment's keys only.
    index: the number of positions decoded so far.
    """

    kv: jax.Array
    k_sum: jax.Array
    shift: jax.Array
    segment: jax.Array
    index: jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class Favor(base.Kernel):
    """FAVOR+ attention (Performer) with positive random features.

    Random-feature policy: the projection is a pure function of (`key`, head_dim), drawn when a
    call needs it, so equal kernels give equal outputs. Evaluation and decoding always use these
    fixed features. With `redraw=True`, a call that receives `rng` draws fresh features from that
    rng instead (training: pass a new rng each step to redraw, as the Performer paper advises);
    without `rng` the fixed features are used. With `redraw=False`, `rng` is ignored.

    Masks: a key-padding mask `[batch, k_length]` removes the padded keys from the numerator and the
    normaliser. A full `[batch, heads, q_length, k_length]` mask and `bias` raise ValueError: linear
    attention never forms the q x k score matrix they would act on.

    Attributes:
      num_features: m, the number of random features.
      key: a jax PRNG key or an int seed (jax.random.key(seed)); 0 by default.
      orthogonal: rows drawn in orthogonal blocks (QR of d x d Gaussians) with chi-distributed
        norms, which lowers the variance of the estimate; False draws i.i.d. Gaussian rows.
      redraw: whether a call with `rng` draws fresh features (see above).
      chunk: causal attention is computed in chunks of this many positions; the default, 128,
        makes the in-chunk products whole tiles of a TPU's 128x128 matrix unit and of GPU tensor
        cores.
      eps: added to every normalised feature so the normaliser stays positive.
      implementation: "xla" on every platform ("auto" is the same): FAVOR+ is matrix products
        and a scan that XLA fuses well; there is no Pallas kernel for it.
    """

    num_features: int = 256
    key: int | jax.Array = 0
    orthogonal: bool = True
    redraw: bool = False
    chunk: int = 128
    eps: float = 1e-6
    implementation: Literal["auto", "xla"] = "auto"

    def __post_init__(self):
        if self.num_features < 1:
            raise ValueError(f"num_features must be at least 1, got {self.num_features}")
        if self.chunk < 1:
            raise ValueError(f"chunk must be at least 1, got {self.chunk}")
        if not self.eps > 0.0:
            raise ValueError(f"eps must be positive, got {self.eps}")
        if not isinstance(self.key, numbers.Integral) and not _is_prng_key(self.key):
            raise ValueError(f"key must be a jax PRNG key or an int seed, got {self.key!r}")
        base.check_implementation(self.implementation, ("auto", "xla"))

    # A jax key array has no value equality or hash; compare the key's bits so the kernel can be a
    # static field of an nnx module or a static argument of jit.
    def _identity(self) -> tuple:
        if isinstance(self.key, numbers.Integral):
            key = ("seed", int(self.key))
        else:
            bits = np.asarray(jax.random.key_data(self.key)).ravel().tolist()
            key = (str(self.key.dtype), tuple(bits))
        options = (self.orthogonal, self.redraw, self.chunk, self.eps, self.implementation)
        return (self.num_features, key, *options)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Favor):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def projection(self, head_dim: int, rng: jax.Array | None = None) -> jax.Array:
        """The random features `[num_features, head_dim]` in float32 (see the redraw policy)."""
        # With a concrete key (the fixed features, even inside jit) the draw runs once, at trace
        # time, and enters the compiled program as a constant: no QR or random-bit generation per
        # call, and less to compile. A traced rng (redraw) is drawn inside the program.
        with jax.ensure_compile_time_eval():
            if self.redraw and rng is not None:
                key = rng
            elif isinstance(self.key, numbers.Integral):
                key = jax.random.key(int(self.key))
            else:
                key = self.key
            return draw_projection(key, self.num_features, head_dim, self.orthogonal)

    def _attend(self, q, k, v, mask, causal, bias, scale, rng, segment_ids, segments) -> jax.Array:
        """Each segment of segment_ids is one contiguous run (packed sequences): the sums restart
        at every segment boundary."""
        head_dim = q.shape[-1]
        _check_arguments(q.shape[1], k.shape[1], mask, causal, bias, segments)
        projection = self.projection(head_dim, rng)
        qs, ks, vs, valid = _prepare(q, k, v, mask, scale)
        if causal:
            out = _end_aligned_causal(qs, ks, vs, valid, segments, projection, self.eps, self.chunk)
        elif segments is not None:
            out = segmented_bidirectional_attention(
                qs, ks, vs, valid, segments, projection, self.eps, self.chunk
            )
        else:
            out = bidirectional_attention(qs, ks, vs, valid, projection, self.eps)
        return _heads_last(out).astype(q.dtype)

    def _probabilities(self, q, k, mask, causal, bias, scale, segments) -> jax.Array:
        """The attention matrix the fixed features define: query i weighs key j by
        phi(q_i).phi(k_j) over the sum of that over the keys i sees (causal: j <= i; of its
        segment; unpadded), so these probabilities times v give the kernel's output. Raises
        ValueError when the matrix would exceed MAX_PROBABILITIES elements."""
        batch, q_len, heads, head_dim = q.shape
        k_len, kv_heads = k.shape[1], k.shape[2]
        _check_arguments(q_len, k_len, mask, causal, bias, segments)
        size = batch * heads * q_len * k_len
        if size > MAX_PROBABILITIES:
            raise ValueError(
                f"Favor.probabilities would form a [{batch}, {heads}, {q_len}, {k_len}] matrix "
                f"({size * 4 / 2**30:.1f} GiB in float32), above MAX_PROBABILITIES = "
                f"{MAX_PROBABILITIES} elements (1 GiB): FAVOR+ runs in linear memory because it "
                "never forms this matrix. Ask for the probabilities of fewer or shorter sequences."
            )
        projection = self.projection(head_dim)
        qs, ks, _, valid = _prepare(q, k, k, mask, scale)
        psi, log_scale = key_features(ks, valid, projection, self.eps)
        products = jnp.einsum("bhgqr,bhkr->bhgqk", query_features(qs, projection, self.eps), psi)
        products = products.reshape(batch, heads, q_len, k_len)
        group = heads // kv_heads
        log_scale = jnp.broadcast_to(
            log_scale[:, :, None, None], (batch, kv_heads, group, 1, k_len)
        )
        log_scale = log_scale.reshape(batch, heads, 1, k_len)
        allowed = base.allowed_pairs(mask, causal, segments, q_len, k_len)
        if allowed is not None:
            log_scale = jnp.where(allowed, log_scale, -jnp.inf)
        # As in the kernel, keys are weighed relative to the largest log-scale a query sees.
        ref = _finite(jnp.max(log_scale, axis=-1, keepdims=True))
        weights = products * jnp.exp(log_scale - ref)
        return _normalise(weights, jnp.sum(weights, axis=-1))

    def init_cache(
        self, batch: int, max_length: int, heads: int, head_dim: int, dtype
    ) -> FavorCache:
        """An empty decoding state. `max_length` and `dtype` are taken for the protocol shared
        with the other kernels: the state does not grow with length and is always float32."""
        del max_length, dtype
        state = _empty_state(batch, heads, self.num_features, head_dim)
        return FavorCache(*state, index=jnp.zeros((), jnp.int32))

    def _cache_heads(self, cache: FavorCache) -> tuple[int, int]:
        return cache.kv.shape[1], cache.kv.shape[3]

    def _decode(self, cache, q, k, v, mask, scale, segment_ids) -> tuple[jax.Array, FavorCache]:
        """With the fixed features, each segment contiguous: equal to one causal call over the
        whole sequence."""
        num_features, head_dim = cache.kv.shape[2:]
        if num_features != self.num_features:
            raise ValueError(
                f"cache holds {num_features} features, this kernel has {self.num_features}"
            )
        qs, ks, vs, valid = _prepare(q, k, v, mask, scale)
        state = (cache.kv, cache.k_sum, cache.shift, cache.segment)
        if segment_ids is None:
            segment_ids = jnp.zeros(q.shape[:2], jnp.int32)
        segments = (segment_ids.astype(jnp.int32),) * 2
        out, state = causal_attention(
            qs, ks, vs, valid, segments, self.projection(head_dim), self.eps, self.chunk, state
        )
        return _heads_last(out).astype(q.dtype), FavorCache(*state, index=cache.index + q.shape[1])


def _check_arguments(q_len: int, k_len: int, mask, causal: bool, bias, segments) -> None:
    """Raises ValueError for what FAVOR+ cannot honour."""
    if segments is not None and not causal and q_len != k_len:
        raise ValueError(
            "Favor takes segment_ids without causal masking only for q_length == k_length "
            f"(its per-segment sums run along one sequence), got {q_len} and {k_len}"
        )
    if bias is not None:
        raise ValueError(
            "Favor cannot add an attention bias: linear attention never forms the q x k scores"
        )
    if mask is not None and mask.ndim == 4:
        raise ValueError(
            "Favor cannot honour a full [batch, heads, q_length, k_length] mask: linear "
            "attention never forms the q x k scores. Pass a key-padding mask [batch, k_length] "
            "and causal=True for causal masking."
        )


def _is_prng_key(key) -> bool:
    if not isinstance(key, jax.Array):
        return False
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.ndim == 0
    raw = key.dtype == jnp.uint32 and key.ndim == 1
    return typed or raw


@functools.partial(jax.jit, static_argnames=("num_features", "head_dim", "orthogonal"))
def draw_projection(
    key: jax.Array, num_features: int, head_dim: int, orthogonal: bool = True
) -> jax.Array:
    """Random feature directions `[num_features, head_dim]` in float32.

    Orthogonal: rows come in blocks of head_dim orthonormal vectors (Q of the QR of a Gaussian
    matrix; the last block is truncated), each scaled by the norm of an independent Gaussian vector
    (chi-distributed), so every row has the marginal law of a Gaussian row, as the unbiased
    estimator needs.
    """
    if not orthogonal:
        return jax.random.normal(key, (num_features, head_dim), jnp.float32)
    blocks = -(-num_features // head_dim)
    # One draw for both the blocks and the norms (each random draw adds to compile time).
    gaussian = jax.random.normal(key, (blocks * head_dim + num_features, head_dim), jnp.float32)
    square, for_norms = gaussian[: blocks * head_dim], gaussian[blocks * head_dim :]
    ortho, upper = jnp.linalg.qr(square.reshape(blocks, head_dim, head_dim))
    # QR's Q alone is not uniformly distributed over rotations; fixing the signs of R's diagonal
    # makes it so.
    ortho = ortho * jnp.sign(jnp.diagonal(upper, axis1=-2, axis2=-1))[:, None, :]
    rows = jnp.swapaxes(ortho, -1, -2).reshape(blocks * head_dim, head_dim)[:num_features]
    norms = jnp.linalg.norm(for_norms, axis=-1)
    return rows * norms[:, None]


def query_features(x: jax.Array, projection: jax.Array, eps: float) -> jax.Array:
    """exp(w.x - max_r w.x) + eps: x `[..., head_dim]` (scaled) -> `[..., num_features]`."""
    proj = _project(x, projection)
    return jnp.exp(proj - jnp.max(proj, axis=-1, keepdims=True)) + eps


def key_features(
    x: jax.Array, valid: jax.Array, projection: jax.Array, eps: float
) -> tuple[jax.Array, jax.Array]:
    """Normalised key features psi `[..., num_features]` and log-scales a `[...]`, for x
    `[..., head_dim]` (scaled) and `valid` (broadcastable to `[...]`): phi(x) = exp(a) psi.
    Invalid keys get psi = 0 and a = -inf, so they drop out of the numerator and the normaliser."""
    proj = _project(x, projection)
    row_max = jnp.max(proj, axis=-1, keepdims=True)
    psi = jnp.where(valid[..., None], jnp.exp(proj - row_max) + eps, 0.0)
    log_scale = jnp.where(valid, row_max[..., 0] - 0.5 * jnp.sum(x * x, axis=-1), -jnp.inf)
    return psi, log_scale


def _project(x: jax.Array, projection: jax.Array) -> jax.Array:
    # The exponential amplifies rounding in w.x, so this product runs at full float32 precision
    # on accelerators that would otherwise use bfloat16 passes.
    return jnp.einsum("...d,rd->...r", x, projection, precision=jax.lax.Precision.HIGHEST)


def bidirectional_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    valid: jax.Array,
    projection: jax.Array,
    eps: float,
) -> jax.Array:
    """Non-causal FAVOR+ in O(length): q `[batch, kv_heads, group, q_length, head_dim]`, k
    `[batch, kv_heads, k_length, head_dim]` (both scaled), v `[batch, kv_heads, k_length, dim]`
    and valid `[batch, kv_heads | 1, k_length]`, all float32. Returns `[batch, kv_heads, group,
    q_length, dim]`."""
    batch, heads, _, dim = v.shape
    empty = _empty_state(batch, heads, projection.shape[0], dim)
    kv, k_sum, *_ = _absorb(empty, *key_features(k, valid, projection, eps), v)
    qf = query_features(q, projection, eps)
    num = jnp.einsum("bhgir,bhrd->bhgid", qf, kv)
    den = jnp.einsum("bhgir,bhr->bhgi", qf, k_sum)
    return _normalise(num, den)


def segmented_bidirectional_attention(q, k, v, valid, segments, projection, eps, chunk):
    """Non-causal FAVOR+ of equal-length q and k (layout as `bidirectional_attention`) where a
    query sees only the keys of its segment (`segments`: query and key ids `[batch, length]`,
    each segment one contiguous run, as packing makes them): a forward pass over keys j <= i and
    a backward pass over keys j > i, each restarting at segment boundaries, summed."""
    empty = _empty_state(v.shape[0], v.shape[1], projection.shape[0], v.shape[-1])
    fwd, _ = _causal_sums(q, k, v, valid, segments, projection, eps, chunk, empty, diagonal=True)

    def flip(x, axis):
        return jnp.flip(x, axis)

    flipped = (flip(q, 3), flip(k, 2), flip(v, 2), flip(valid, 2))
    flipped_segments = tuple(flip(s, 1) for s in segments)
    bwd, _ = _causal_sums(*flipped, flipped_segments, projection, eps, chunk, empty, diagonal=False)
    bwd = jax.tree.map(lambda x: flip(x, 3), bwd)
    return _normalise(*_add_sums(fwd, bwd))


def causal_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    valid: jax.Array,
    segments: tuple[jax.Array, jax.Array] | None,
    projection: jax.Array,
    eps: float,
    chunk: int,
    state: State,
) -> tuple[jax.Array, State]:
    """Causal FAVOR+ of equal-length q, k, v (layout as `bidirectional_attention`), query i seeing
    key j <= i of its own segment (`segments`: ids `[batch, length]` of the queries and keys,
    each segment one contiguous run; None: one segment), continuing from `state` (the keys before
    position 0). Returns (out `[batch, kv_heads, group, length, dim]`, the state after the last
    key).

    Any length works: the sequence is padded at the end to whole chunks with invalid keys, which
    no real query sees and the state ignores.
    """
    (num, den, _), state = _causal_sums(q, k, v, valid, segments, projection, eps, chunk, state)
    return _normalise(num, den), state


def _causal_sums(q, k, v, valid, segments, projection, eps, chunk, state, diagonal=True):
    """`causal_attention`'s numerators `[batch, kv_heads, group, length, dim]`, denominators
    `[..., length]` and references (the log-scale they are relative to, -inf for a query that
    sees no key), and the final state; without the `diagonal`, query i sees keys j < i only."""
    batch, length = q.shape[0], q.shape[3]
    size = min(chunk, length)
    pad = -length % size
    if segments is None:
        segments = (jnp.zeros((batch, length), jnp.int32),) * 2

    def chunks(x, axis):
        x = _pad_axis(x, axis, 0, pad)
        x = x.reshape(x.shape[:axis] + (-1, size) + x.shape[axis + 1 :])
        return jnp.moveaxis(x, axis, 0)

    def step(state, xs):
        return _causal_chunk(state, *xs, projection, eps, diagonal)

    xs = (
        chunks(q, 3),
        chunks(k, 2),
        chunks(v, 2),
        chunks(valid, 2),
        chunks(segments[0], 1),
        chunks(segments[1], 1),
    )
    # Rematerialise each chunk in the backward pass: the scan then keeps only its inputs and the
    # state entering each chunk, instead of every chunk's features and score blocks.
    state, sums = jax.lax.scan(jax.checkpoint(step), state, xs)

    def unchunk(x):  # [chunks, batch, heads, group, size, ...] -> [batch, heads, group, length]
        x = jnp.moveaxis(x, 0, 3)
        return x.reshape(x.shape[:3] + (-1,) + x.shape[5:])[:, :, :, :length]

    return jax.tree.map(unchunk, sums), state


def _end_aligned_causal(q, k, v, valid, segments, projection, eps, chunk):
    """Causal attention with the queries aligned to the end of the keys (base.causal_allowed),
    done as a square causal pass by padding the shorter of q and k/v at the front."""
    q_len, k_len = q.shape[3], k.shape[2]
    length = max(q_len, k_len)

    def front(x, n, axis):
        return _pad_axis(x, axis, n, 0)

    batch, heads, _, dim = v.shape
    state = _empty_state(batch, heads, projection.shape[0], dim)
    k, v, valid = (front(x, length - k_len, 2) for x in (k, v, valid))
    if segments is not None:
        segments = (front(segments[0], length - q_len, 1), front(segments[1], length - k_len, 1))
    q = front(q, length - q_len, 3)
    out, _ = causal_attention(q, k, v, valid, segments, projection, eps, chunk, state)
    return out[:, :, :, length - q_len :]


def _pad_axis(x: jax.Array, axis: int, before: int, after: int) -> jax.Array:
    """Pads one axis: floats and masks with zeros (invalid keys), segment ids (integers) with
    their edge value, so padding never starts a segment of its own."""
    widths = [(0, 0)] * x.ndim
    widths[axis] = (before, after)
    integer = jnp.issubdtype(x.dtype, jnp.integer)
    return jnp.pad(x, widths, mode="edge" if integer else "constant")


def _causal_chunk(
    state: State,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    valid: jax.Array,
    q_segment: jax.Array,
    k_segment: jax.Array,
    projection: jax.Array,
    eps: float,
    diagonal: bool = True,
) -> tuple[State, tuple[jax.Array, jax.Array, jax.Array]]:
    """One chunk: q `[batch, kv_heads, group, chunk, head_dim]`, k `[batch, kv_heads, chunk,
    head_dim]`, v `[batch, kv_heads, chunk, dim]`, valid `[batch, kv_heads | 1, chunk]`, segment
    ids `[batch, chunk]`. Returns (the state after the chunk, (numerators, denominators,
    references) of its queries, see `_causal_sums`)."""
    kv, k_sum, shift, state_segment = state
    qf = query_features(q, projection, eps)
    psi, log_scale = key_features(k, valid, projection, eps)
    size = q.shape[3]
    visible = np.tril(np.ones((size, size), bool), 0 if diagonal else -1)
    visible = visible & (q_segment[:, :, None] == k_segment[:, None, :])[:, None]
    # The state holds the keys of one segment (the last one absorbed), seen by that segment only.
    past_seen = (q_segment == state_segment[:, None])[:, None]  # [batch, 1, chunk]
    past_shift = jnp.where(past_seen, shift[..., None], -jnp.inf)
    # Query i's reference: the largest log-scale among the keys it sees. It cancels between
    # numerator and denominator, so no gradient.
    seen = jnp.max(jnp.where(visible, jax.lax.stop_gradient(log_scale)[..., None, :], -jnp.inf), -1)
    raw_ref = jnp.maximum(past_shift, seen)
    ref = _finite(raw_ref)
    # Masked before the exponential: a future key's weight could overflow, and inf * 0 is NaN.
    exponent = jnp.where(visible, log_scale[..., None, :] - ref[..., :, None], -jnp.inf)
    scores = jnp.einsum("bhgir,bhjr->bhgij", qf, psi) * jnp.exp(exponent)[:, :, None]
    past = jnp.exp(past_shift - ref)[:, :, None]
    num = jnp.einsum("bhgir,bhrd->bhgid", qf, kv) * past[..., None]
    num = num + jnp.einsum("bhgij,bhjd->bhgid", scores, v)
    den = jnp.einsum("bhgir,bhr->bhgi", qf, k_sum) * past + jnp.sum(scores, axis=-1)
    raw_ref = jnp.broadcast_to(raw_ref[:, :, None], den.shape)
    return _absorb_segment(state, psi, log_scale, v, k_segment), (num, den, raw_ref)


def _absorb_segment(state: State, psi, log_scale, v, k_segment) -> State:
    """The state after a chunk's keys: those of the chunk's last segment, added to the old state
    if that segment continues it, else replacing it."""
    kv, k_sum, shift, state_segment = state
    last = k_segment[:, -1]
    own = (k_segment == last[:, None])[:, None]  # [batch, 1, chunk]
    carried = (state_segment == last)[:, None]  # [batch, 1]
    old = (
        jnp.where(carried[..., None, None], kv, 0.0),
        jnp.where(carried[..., None], k_sum, 0.0),
        jnp.where(carried, shift, -jnp.inf),
        last,
    )
    return _absorb(old, jnp.where(own[..., None], psi, 0.0), jnp.where(own, log_scale, -jnp.inf), v)


def _add_sums(a, b):
    """(num, den) of two disjoint key sets, each relative to its own reference, brought to one."""
    (num_a, den_a, ref_a), (num_b, den_b, ref_b) = a, b
    ref = _finite(jnp.maximum(ref_a, ref_b))
    wa = jnp.where(jnp.isfinite(ref_a), jnp.exp(_finite(ref_a) - ref), 0.0)
    wb = jnp.where(jnp.isfinite(ref_b), jnp.exp(_finite(ref_b) - ref), 0.0)
    return num_a * wa[..., None] + num_b * wb[..., None], den_a * wa + den_b * wb


def _absorb(state: State, psi: jax.Array, log_scale: jax.Array, v: jax.Array) -> State:
    """Adds keys (psi `[batch, heads, n, m]`, log_scale `[batch, heads, n]`) and their values
    `[batch, heads, n, dim]` to a state, moving its shift to the new largest log-scale."""
    kv, k_sum, shift, segment = state
    new_shift = jnp.maximum(shift, jnp.max(jax.lax.stop_gradient(log_scale), axis=-1))
    ref = _finite(new_shift)
    decay = jnp.exp(shift - ref)
    weighted = psi * jnp.exp(log_scale - ref[..., None])[..., None]
    kv = kv * decay[..., None, None] + jnp.einsum("bhjr,bhjd->bhrd", weighted, v)
    k_sum = k_sum * decay[..., None] + jnp.sum(weighted, axis=-2)
    return kv, k_sum, new_shift, segment


def _empty_state(batch: int, heads: int, num_features: int, dim: int) -> State:
    return (
        jnp.zeros((batch, heads, num_features, dim), jnp.float32),
        jnp.zeros((batch, heads, num_features), jnp.float32),
        jnp.full((batch, heads), -jnp.inf, jnp.float32),
        jnp.zeros((batch,), jnp.int32),
    )


def _finite(shift: jax.Array) -> jax.Array:
    """A shift of -inf (no key yet) as 0, so exp(-inf - shift) is 0 rather than NaN."""
    return jnp.where(jnp.isfinite(shift), shift, 0.0)


def _normalise(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den `[..., dim]`, `[...]`; a query that sees no key has num = den = 0 and gets 0 with
    a finite gradient."""
    return num / jnp.where(den > 0.0, den, 1.0)[..., None]


def _prepare(q, k, v, mask, scale):
    """The kernel's inputs in its working layout: float32 q `[batch, kv_heads, group, q_length,
    head_dim]` and k `[batch, kv_heads, k_length, head_dim]` multiplied by sqrt(scale) (so that
    q.k carries the scale), v `[batch, kv_heads, k_length, dim]`, and key validity `[batch, 1,
    k_length]`. Query heads are grouped by the key/value head they read (a free reshape)."""
    head_dim = q.shape[-1]
    scale = base.default_scale(head_dim, scale)
    if not scale > 0.0:
        raise ValueError(f"Favor needs a positive scale, got {scale}")
    q, k, v = (jnp.swapaxes(x, 1, 2).astype(jnp.float32) for x in (q, k, v))
    batch, kv_heads, k_len, _ = k.shape
    q = q.reshape(batch, kv_heads, -1, *q.shape[2:])
    valid = jnp.ones((batch, k_len), bool) if mask is None else mask
    return q * math.sqrt(scale), k * math.sqrt(scale), v, valid[:, None, :]


def _heads_last(out: jax.Array) -> jax.Array:
    """`[batch, kv_heads, group, length, dim]` -> `[batch, length, heads, dim]`."""
    batch, kv_heads, group, length, dim = out.shape
    return jnp.moveaxis(out.reshape(batch, kv_heads * group, length, dim), 1, 2)
