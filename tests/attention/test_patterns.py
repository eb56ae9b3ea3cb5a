import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polyformer.attention import patterns as P

KEY = jax.random.key(0)


def grid(text: str) -> np.ndarray:
    """A boolean mask written out as rows of 0/1 characters."""
    return np.array([[c == "1" for c in row] for row in text.split()])


def test_band_by_hand():
    want = grid("11000 11100 01110 00111 00011")
    np.testing.assert_array_equal(P.band(1).mask(5, 5), want)


def test_band_aligns_fewer_queries_to_the_end_of_the_keys():
    # q_len 3, k_len 5: query i sits at position i + 2.
    np.testing.assert_array_equal(P.band(1).mask(3, 5), grid("01110 00111 00011"))


def test_band_with_more_queries_than_keys():
    # q_len 4, k_len 2: query i sits at position i - 2.
    np.testing.assert_array_equal(P.band(1).mask(4, 2), grid("00 10 11 11"))


def test_dilated_by_hand():
    want = grid("1010100 0101010 1010101 0101010 1010101 0101010 0010101")
    np.testing.assert_array_equal(P.dilated(2, 2).mask(7, 7), want)


def test_block_local_by_hand():
    want = grid("1111000 1111000 1111110 1111110 0011111 0011111 0000111")
    np.testing.assert_array_equal(P.block_local(2, 3).mask(7, 7), want)
    np.testing.assert_array_equal(
        P.block_local(2).mask(5, 5), grid("11000 11000 00110 00110 00001")
    )


def test_global_tokens_by_hand():
    want = grid("111111 100001 100001 100001 100001 111111")
    np.testing.assert_array_equal(P.global_tokens([0, -1]).mask(6, 6), want)
    np.testing.assert_array_equal(P.global_tokens(2).mask(4, 4), grid("1111 1111 1100 1100"))


def test_global_tokens_outside_the_sequence_are_dropped():
    np.testing.assert_array_equal(P.global_tokens([5, -9]).mask(3, 3), np.zeros((3, 3), bool))
    np.testing.assert_array_equal(P.global_tokens(9).mask(2, 2), np.ones((2, 2), bool))


def test_global_tokens_with_many_runs_match_membership():
    idx = list(range(0, 40, 3))  # 14 runs: the lookup-table path
    mask = P.global_tokens(idx).mask(40, 40)
    member = np.isin(np.arange(40), idx)
    np.testing.assert_array_equal(mask, member[:, None] | member[None, :])


def test_random_blocks_rows_are_distinct_blocks_from_the_table():
    pattern = P.random_blocks(2, KEY, block=4)
    table = pattern.table(30)
    assert table.shape == (8, 2)
    assert all(len(set(row)) == 2 for row in table.tolist())
    blocks = np.zeros((8, 8), bool)
    blocks[np.arange(8)[:, None], table] = True
    want = np.repeat(np.repeat(blocks, 4, 0), 4, 1)[:30, :30]
    np.testing.assert_array_equal(pattern.mask(30, 30), want)


def test_random_blocks_are_deterministic_per_key():
    a = P.random_blocks(3, jax.random.key(1), block=4).mask(64, 64)
    np.testing.assert_array_equal(a, P.random_blocks(3, jax.random.key(1), block=4).mask(64, 64))
    np.testing.assert_array_equal(
        a, P.random_blocks(3, jax.random.PRNGKey(1), block=4).mask(64, 64)
    )
    assert not np.array_equal(a, P.random_blocks(3, jax.random.key(2), block=4).mask(64, 64))


def test_random_blocks_take_every_block_when_asked_for_more():
    np.testing.assert_array_equal(P.random_blocks(9, KEY, block=4).mask(10, 10), np.ones((10, 10)))
    assert not P.random_blocks(0, KEY).mask(5, 5).any()


def test_random_blocks_under_jit_match_the_host_mask():
    pattern = P.bigbird(block=4, window=1, global_blocks=0, random_blocks=2, key=KEY)
    rows = jax.jit(lambda t: pattern.allows(t[:, None], jnp.arange(24)[None, :], 24, 24))
    np.testing.assert_array_equal(rows(jnp.arange(24)), pattern.mask(24, 24))


def test_random_blocks_refuse_a_traced_key():
    with pytest.raises(ValueError, match="outside jit"):
        jax.jit(lambda key: P.random_blocks(2, key).n)(KEY)


def test_union_and_intersection():
    a, b = P.band(2), P.global_tokens([4])
    np.testing.assert_array_equal((a | b).mask(9, 9), a.mask(9, 9) | b.mask(9, 9))
    np.testing.assert_array_equal((a & b).mask(9, 9), a.mask(9, 9) & b.mask(9, 9))
    c = P.dilated(1, 3)
    assert a | b | c == P.Union((a, b, c))
    assert (a & b) & c == P.Intersection((a, b, c))
    assert hash(a | b) == hash(P.band(2) | P.global_tokens([4]))


def test_presets_are_their_compositions():
    assert P.longformer(512, [0]) == P.band(256) | P.global_tokens([0])
    first, last = list(range(64)), list(range(-64, 0))
    want = P.block_local(64, 3) | P.global_tokens(first + last) | P.random_blocks(3, KEY, 64)
    assert P.bigbird(64, 3, 2, 3, KEY) == want
    # g=3: the first two blocks and the last one.
    g3 = P.bigbird(block=4, window=1, global_blocks=3, random_blocks=0).mask(20, 20)
    np.testing.assert_array_equal(
        g3.all(axis=1), np.isin(np.arange(20), [*range(8), *range(16, 20)])
    )


CASES = [
    P.band(3),
    P.dilated(2, 3),
    P.block_local(5, 3),
    P.global_tokens([0, 7, -1]),
    P.random_blocks(2, KEY, block=6),
    P.longformer(6, [2]),
    P.bigbird(4, 3, 2, 1, KEY),
    P.band(4) & P.dilated(3, 2),
]


@pytest.mark.parametrize("pattern", CASES, ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("q_len, k_len, block", [(37, 37, 8), (13, 30, 4), (30, 13, 5)])
def test_block_mask_never_misses_an_allowed_pair(pattern, q_len, k_len, block):
    mask = pattern.mask(q_len, k_len)
    blocks = pattern.block_mask(q_len, k_len, block)
    expanded = np.repeat(np.repeat(blocks, block, 0), block, 1)[:q_len, :k_len]
    assert not (mask & ~expanded).any()
    if not isinstance(pattern, P.Intersection):  # atoms and unions are exact
        padded = np.zeros((blocks.shape[0] * block, blocks.shape[1] * block), bool)
        padded[:q_len, :k_len] = mask
        exact = padded.reshape(blocks.shape[0], block, blocks.shape[1], block).any(axis=(1, 3))
        np.testing.assert_array_equal(blocks, exact)


@pytest.mark.parametrize("pattern", CASES, ids=lambda p: type(p).__name__)
def test_traced_predicate_matches_the_mask(pattern):
    rows = jax.jit(lambda i: pattern.allows(i[:, None], jnp.arange(30)[None, :], 13, 30))
    np.testing.assert_array_equal(rows(jnp.arange(13)), pattern.mask(13, 30))


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: P.band(-1), "band width must be an integer >= 0, got -1"),
        (lambda: P.band(1.5), "band width must be an integer"),
        (lambda: P.band(True), "got the bool"),
        (lambda: P.dilated(2, 0), "dilation must be an integer >= 1"),
        (lambda: P.block_local(0), "block must be an integer >= 1"),
        (lambda: P.block_local(4, 2), "window must be an odd number of blocks"),
        (lambda: P.random_blocks(-1, KEY), "n .* must be an integer >= 0"),
        (lambda: P.random_blocks(2, KEY, block=0), "block must be an integer >= 1"),
        (lambda: P.random_blocks(2, 7), "needs a jax PRNG key"),
        (lambda: P.global_tokens("cls"), "a sequence of token indices"),
        (lambda: P.global_tokens([0.5]), "must be integers"),
        (lambda: P.longformer(511), "must be even"),
        (lambda: P.bigbird(random_blocks=3), "needs a PRNG key"),
        (lambda: P.band(1).mask(0, 4), "q_len must be an integer >= 1"),
        (lambda: P.band(1).block_mask(4, 4, 0), "block must be an integer >= 1"),
    ],
)
def test_bad_arguments_say_what_was_expected(build, message):
    with pytest.raises(ValueError, match=message):
        build()
