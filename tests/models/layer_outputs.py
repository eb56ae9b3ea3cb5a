"""Per-layer outputs against transformers': hidden states and attention probabilities, one
tuple each, compared array by array."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def assert_layers_match(
    got: Sequence, want: Sequence, count: int, atol: float, keep: np.ndarray | None = None
) -> None:
    """`got` (ours) and `want` (transformers' torch tensors) both hold `count` arrays, each equal
    within `atol`; `keep` (a boolean index of the leading axes) compares only those entries."""
    assert got is not None and len(got) == len(want) == count
    for g, w in zip(got, want, strict=True):
        g, w = np.asarray(g), w.detach().numpy()
        assert g.shape == w.shape
        if keep is not None:
            g, w = g[keep], w[keep]
        np.testing.assert_allclose(g, w, atol=atol, rtol=0)
