import numpy as np
import pytest

from polyformer.audio import resample


def test_resample_changes_the_rate_and_keeps_a_tone():
    t = np.arange(16000) / 16000
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    at_8k = resample(tone, 16000, 8000)
    assert at_8k.dtype == np.float32 and len(at_8k) == 8000
    expected = np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)
    np.testing.assert_allclose(at_8k[500:-500], expected[500:-500], atol=1e-2)
    np.testing.assert_array_equal(resample(tone, 16000, 16000), tone)


@pytest.mark.parametrize("rates", [(0, 16000), (16000, -1)])
def test_resample_refuses_rates_that_are_not_positive(rates):
    with pytest.raises(ValueError, match="sample rates must be positive"):
        resample(np.zeros(10, np.float32), *rates)
