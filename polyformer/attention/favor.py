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

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from polyformer.attention import base
from polyformer.attention.dense import check_decode_inputs

State = tuple[jax.Array, jax.Array, jax.Array]
"""(kv `[batch, heads, m, head_dim]`, k_sum `[batch, heads, m]`, shift `[batch, heads]`)."""


@flax.struct.dataclass
class FavorCache:
    """The running causal state of everything decoded so far; its size does not grow with length.

    kv `[batch, heads, num_features, head_dim]`: sum over keys of exp(a(k) - shift) psi(k) v^T.
    k_sum `[batch, heads, num_features]`: sum over keys of exp(a(k) - shift) psi(k).
    shift `[batch, heads]`: the largest key log-scale a(k) seen so far (-inf before the first key).
    index: the number of positions decoded so far.
    """

    kv: jax.Array
    k_sum: jax.Array
    shift: jax.Array
    index: jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class Favor:
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
      chunk: causal attention is computed in chunks of this many positions.
      eps: added to every normalised feature so the normaliser stays positive.
    """

    num_features: int = 256
    key: int | jax.Array = 0
    orthogonal: bool = True
    redraw: bool = False
    chunk: int = 64
    eps: float = 1e-6

    def __post_init__(self):
        if self.num_features < 1:
            raise ValueError(f"num_features must be at least 1, got {self.num_features}")
        if self.chunk < 1:
            raise ValueError(f"chunk must be at least 1, got {self.chunk}")
        if not self.eps > 0.0:
            raise ValueError(f"eps must be positive, got {self.eps}")
        if not isinstance(self.key, numbers.Integral) and not _is_prng_key(self.key):
            raise ValueError(f"key must be a jax PRNG key or an int seed, got {self.key!r}")

    # A jax key array has no value equality or hash; compare the key's bits so the kernel can be a
    # static field of an nnx module or a static argument of jit.
    def _identity(self) -> tuple:
        if isinstance(self.key, numbers.Integral):
            key = ("seed", int(self.key))
        else:
            bits = np.asarray(jax.random.key_data(self.key)).ravel().tolist()
            key = (str(self.key.dtype), tuple(bits))
        return (self.num_features, key, self.orthogonal, self.redraw, self.chunk, self.eps)

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

    def __call__(
        self,
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        mask: jax.Array | None = None,
        causal: bool = False,
        *,
        bias: jax.Array | None = None,
        scale: float | None = None,
        rng: jax.Array | None = None,
    ) -> jax.Array:
        head_dim = base.check_inputs(q, k, v, mask, bias)[-1]
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
        projection = self.projection(head_dim, rng)
        qs, ks, vs, valid = _prepare(q, k, v, mask, scale)
        if causal:
            out = _end_aligned_causal(qs, ks, vs, valid, projection, self.eps, self.chunk)
        else:
            out = bidirectional_attention(qs, ks, vs, valid, projection, self.eps)
        return jnp.swapaxes(out, 1, 2).astype(q.dtype)

    def init_cache(
        self, batch: int, max_length: int, heads: int, head_dim: int, dtype
    ) -> FavorCache:
        """An empty decoding state. `max_length` and `dtype` are taken for the protocol shared
        with the other kernels: the state does not grow with length and is always float32."""
        del max_length, dtype
        kv, k_sum, shift = _empty_state(batch, heads, self.num_features, head_dim)
        return FavorCache(kv, k_sum, shift, jnp.zeros((), jnp.int32))

    def decode(
        self,
        cache: FavorCache,
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        mask: jax.Array | None = None,
        *,
        scale: float | None = None,
    ) -> tuple[jax.Array, FavorCache]:
        """Attends n new tokens (q, k, v `[batch, n, heads, head_dim]`, `mask` `[batch, n]` True
        for real tokens) causally to everything decoded so far, with the fixed features; returns
        (out `[batch, n, heads, head_dim]`, new cache). Equal to one causal call over the whole
        sequence."""
        _, heads, num_features, head_dim = cache.kv.shape
        check_decode_inputs(q, k, v, mask, heads, head_dim)
        if num_features != self.num_features:
            raise ValueError(
                f"cache holds {num_features} features, this kernel has {self.num_features}"
            )
        qs, ks, vs, valid = _prepare(q, k, v, mask, scale)
        state = (cache.kv, cache.k_sum, cache.shift)
        out, state = causal_attention(
            qs, ks, vs, valid, self.projection(head_dim), self.eps, self.chunk, state
        )
        out = jnp.swapaxes(out, 1, 2).astype(q.dtype)
        return out, FavorCache(*state, index=cache.index + q.shape[1])


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
    """Non-causal FAVOR+ in O(length): q `[batch, heads, q_length, head_dim]`, k `[batch, heads,
    k_length, head_dim]` (both scaled), v `[batch, heads, k_length, dim]` and valid `[batch,
    heads | 1, k_length]`, all float32. Returns `[batch, heads, q_length, dim]`."""
    batch, heads, _, dim = v.shape
    empty = _empty_state(batch, heads, projection.shape[0], dim)
    kv, k_sum, _ = _absorb(empty, *key_features(k, valid, projection, eps), v)
    qf = query_features(q, projection, eps)
    num = jnp.einsum("bhir,bhrd->bhid", qf, kv)
    den = jnp.einsum("bhir,bhr->bhi", qf, k_sum)
    return _normalise(num, den)


def causal_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    valid: jax.Array,
    projection: jax.Array,
    eps: float,
    chunk: int,
    state: State,
) -> tuple[jax.Array, State]:
    """Causal FAVOR+ of equal-length q, k, v (layout as `bidirectional_attention`), query i seeing
    key j <= i, continuing from `state` (the keys before position 0). Returns (out `[batch, heads,
    length, dim]`, the state after the last key).

    Any length works: the sequence is padded at the end to whole chunks with invalid keys, which
    no real query sees and the state ignores.
    """
    length = q.shape[2]
    size = min(chunk, length)
    pad = -length % size

    def chunks(x):
        x = jnp.pad(x, [(0, 0), (0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 3))
        x = x.reshape(x.shape[:2] + (-1, size) + x.shape[3:])
        return jnp.moveaxis(x, 2, 0)

    def step(state, xs):
        return _causal_chunk(state, *xs, projection, eps)

    # Rematerialise each chunk in the backward pass: the scan then keeps only its inputs and the
    # state entering each chunk, instead of every chunk's features and score blocks.
    state, out = jax.lax.scan(jax.checkpoint(step), state, tuple(map(chunks, (q, k, v, valid))))
    out = jnp.moveaxis(out, 0, 2)
    out = out.reshape(out.shape[:2] + (-1,) + out.shape[4:])
    return out[:, :, :length], state


def _end_aligned_causal(q, k, v, valid, projection, eps, chunk):
    """Causal attention with the queries aligned to the end of the keys (base.causal_allowed),
    done as a square causal pass by padding the shorter of q and k/v at the front."""
    q_len, k_len = q.shape[2], k.shape[2]
    length = max(q_len, k_len)

    def front(x, n):
        return jnp.pad(x, [(0, 0), (0, 0), (n, 0)] + [(0, 0)] * (x.ndim - 3))

    batch, heads, _, dim = v.shape
    state = _empty_state(batch, heads, projection.shape[0], dim)
    k, v, valid = front(k, length - k_len), front(v, length - k_len), front(valid, length - k_len)
    out, _ = causal_attention(front(q, length - q_len), k, v, valid, projection, eps, chunk, state)
    return out[:, :, length - q_len :]


def _causal_chunk(
    state: State,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    valid: jax.Array,
    projection: jax.Array,
    eps: float,
) -> tuple[State, jax.Array]:
    """One chunk: q, k `[batch, heads, chunk, head_dim]`, v `[batch, heads, chunk, dim]`, valid
    `[batch, heads | 1, chunk]`. Returns (the state after the chunk, out `[batch, heads, chunk,
    dim]`)."""
    kv, k_sum, shift = state
    qf = query_features(q, projection, eps)
    psi, log_scale = key_features(k, valid, projection, eps)
    # Query i's reference: the largest log-scale among the keys it sees (the earlier chunks' and
    # keys 0..i of this one). It cancels between numerator and denominator, so no gradient.
    seen = jax.lax.cummax(jax.lax.stop_gradient(log_scale), axis=2)
    ref = _finite(jnp.maximum(shift[..., None], seen))
    size = q.shape[2]
    # Masked before the exponential: a future key's weight could overflow, and inf * 0 is NaN.
    exponent = jnp.where(
        np.tril(np.ones((size, size), bool)), log_scale[..., None, :] - ref[..., :, None], -jnp.inf
    )
    scores = jnp.einsum("bhir,bhjr->bhij", qf, psi) * jnp.exp(exponent)
    past = jnp.exp(shift[..., None] - ref)
    num = jnp.einsum("bhir,bhrd->bhid", qf, kv) * past[..., None]
    num = num + jnp.einsum("bhij,bhjd->bhid", scores, v)
    den = jnp.einsum("bhir,bhr->bhi", qf, k_sum) * past + jnp.sum(scores, axis=-1)
    return _absorb(state, psi, log_scale, v), _normalise(num, den)


def _absorb(state: State, psi: jax.Array, log_scale: jax.Array, v: jax.Array) -> State:
    """Adds keys (psi `[batch, heads, n, m]`, log_scale `[batch, heads, n]`) and their values
    `[batch, heads, n, dim]` to a state, moving its shift to the new largest log-scale."""
    kv, k_sum, shift = state
    new_shift = jnp.maximum(shift, jnp.max(jax.lax.stop_gradient(log_scale), axis=-1))
    ref = _finite(new_shift)
    decay = jnp.exp(shift - ref)
    weighted = psi * jnp.exp(log_scale - ref[..., None])[..., None]
    kv = kv * decay[..., None, None] + jnp.einsum("bhjr,bhjd->bhrd", weighted, v)
    k_sum = k_sum * decay[..., None] + jnp.sum(weighted, axis=-2)
    return kv, k_sum, new_shift


def _empty_state(batch: int, heads: int, num_features: int, dim: int) -> State:
    return (
        jnp.zeros((batch, heads, num_features, dim), jnp.float32),
        jnp.zeros((batch, heads, num_features), jnp.float32),
        jnp.full((batch, heads), -jnp.inf, jnp.float32),
    )


def _finite(shift: jax.Array) -> jax.Array:
    """A shift of -inf (no key yet) as 0, so exp(-inf - shift) is 0 rather than NaN."""
    return jnp.where(jnp.isfinite(shift), shift, 0.0)


def _normalise(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den `[..., dim]`, `[...]`; a query that sees no key has num = den = 0 and gets 0 with
    a finite gradient."""
    return num / jnp.where(den > 0.0, den, 1.0)[..., None]


def _prepare(q, k, v, mask, scale):
    """The kernel's inputs in its working layout: float32 q, k `[batch, heads, length, head_dim]`
    multiplied by sqrt(scale) (so that q.k carries the scale), v `[batch, heads, k_length, dim]`,
    and key validity `[batch, 1, k_length]`."""
    head_dim = q.shape[-1]
    scale = base.default_scale(head_dim, scale)
    if not scale > 0.0:
        raise ValueError(f"Favor needs a positive scale, got {scale}")
    q, k, v = (jnp.swapaxes(x, 1, 2).astype(jnp.float32) for x in (q, k, v))
    batch, _, k_len, _ = k.shape
    valid = jnp.ones((batch, k_len), bool) if mask is None else mask
    return q * math.sqrt(scale), k * math.sqrt(scale), v, valid[:, None, :]
