import numpy as np

from polyformer.models.inputs import pad_rows


def test_pad_rows_fills_out_each_row_and_marks_its_items():
    padded, mask = pad_rows([[5, 6], [], [7, 8, 9]], 4, -1, np.int32)
    np.testing.assert_array_equal(padded, [[5, 6, -1, -1], [-1, -1, -1, -1], [7, 8, 9, -1]])
    np.testing.assert_array_equal(mask, [[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]])
    assert padded.dtype == np.int32 and mask.dtype == np.int32
