import math

import numpy as np
import pytest

from benchmarks.attention import profile, runner
from benchmarks.attention.cells import DPA, HEAD_DIM

EXACT = [
    "one shot, [b, q, h, d] einsums (previous dense_attention)",
    "one shot, heads-major layout",
    "query chunks (dense_attention now)",
    DPA,
]


@pytest.mark.parametrize("name", EXACT)
def test_every_exact_variant_is_softmax_attention(name):
    inputs = runner.inputs_at(128, None)
    fn = profile.variants(1.0 / math.sqrt(HEAD_DIM))[name]
    np.testing.assert_allclose(
        np.asarray(fn(*inputs["jax"])), runner.reference(*inputs["np"], None), atol=1e-5
    )


def test_dense_profile_has_a_row_per_variant_and_length():
    table = profile.dense_profile([128], rounds=1, threads=1).splitlines()
    assert table[0].startswith("| L | variant | time ms (min)")
    rows = table[2:]
    assert len(rows) == len(profile.variants(1.0)) + 1  # and torch SDPA
    assert all(row.startswith("| 128 | ") for row in rows)
