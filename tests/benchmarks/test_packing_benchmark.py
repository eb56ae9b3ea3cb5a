"""The padded baseline of the packing benchmark: one document a row, every target once."""

import numpy as np

from benchmarks.packing_benchmark import padded_rows, padding_fraction


def test_padded_rows_hold_each_document_alone_and_pad_the_rest():
    end, seq_len = 9, 4
    # Documents of 6, 1 (only its end: no target), 5 and 2 tokens.
    docs = [[1, 2, 3, 4, 5, end], [end], [6, 7, 8, 1, end], [2, end]]
    rows = padded_rows(np.concatenate(docs), end, seq_len)
    np.testing.assert_array_equal(
        rows["inputs"], [[1, 2, 3, 4], [5, 0, 0, 0], [6, 7, 8, 1], [2, 0, 0, 0]]
    )
    np.testing.assert_array_equal(
        rows["targets"], [[2, 3, 4, 5], [end, 0, 0, 0], [7, 8, 1, end], [end, 0, 0, 0]]
    )
    np.testing.assert_array_equal(rows["weights"], rows["inputs"] != 0)
    assert padding_fraction(np.concatenate(docs), end, seq_len) == 1 - 10 / 16
