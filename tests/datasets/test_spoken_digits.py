"""The espeak-ng spoken digits builder: synthesis, the split by sequence, reproducibility."""

import numpy as np
import pytest

from polyformer.datasets import SpokenDigits, SpokenDigitsConfig
from polyformer.datasets.embedded import split_of
from polyformer.datasets.spoken_digits import (
    SYMBOLS,
    VOICES,
    espeak_available,
    spoken_text,
    synthesize,
    utterances,
)

pytestmark = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")

TINY = SpokenDigitsConfig(name="tiny", num_utterances=16, validation_percent=30, max_symbols=4)


def build(data_dir):
    builder = SpokenDigits(config=TINY, data_dir=str(data_dir))
    builder.download_and_prepare()
    return builder


def records(builder, split):
    source = builder.as_data_source(split=split)
    return [source[i] for i in range(len(source))]


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    return build(tmp_path_factory.mktemp("tfds"))


def test_synthesize_is_16khz_speech_that_scales_with_speed():
    slow = synthesize("seven, two", speed=120)
    fast = synthesize("seven, two", speed=300)
    assert slow.dtype == np.float32 and 0.05 < np.abs(slow).max() <= 1.0
    assert 0.5 * 16000 < len(fast) < len(slow) < 3 * 16000
    np.testing.assert_array_equal(synthesize("seven, two", speed=120), slow)  # deterministic


def test_synthesize_rejects_bad_options():
    with pytest.raises(ValueError, match="speed"):
        synthesize("one", speed=20)
    for voice in ("no-such-voice", "en-us+no-such-variant"):
        with pytest.raises(ValueError, match="no voice"):
            synthesize("one", voice=voice)


def test_letters_are_read_as_letters():
    assert spoken_text("3 7 A") == "3, 7, A"


def test_utterances_are_reproducible_and_within_bounds():
    drawn = utterances(50, seed=1, min_symbols=2, max_symbols=4)
    assert drawn == utterances(50, seed=1, min_symbols=2, max_symbols=4)
    for u in drawn:
        symbols = u.transcript.split(" ")
        assert 2 <= len(symbols) <= 4 and set(symbols) <= set(SYMBOLS)
    assert len({u.voice for u in drawn}) > 3
    for voice in VOICES:
        synthesize("one", voice=voice)  # every default voice exists


def test_splits_hold_whole_sequences(builder):
    train, validation = records(builder, "train"), records(builder, "validation")
    assert len(train) + len(validation) == TINY.num_utterances and train and validation
    for split, rows in (("train", train), ("validation", validation)):
        for row in rows:
            text = row["text"].decode()
            assert split_of(text, TINY.validation_percent) == split
            assert row["audio"].dtype == np.int16 and len(row["audio"]) > 8000
    assert not {r["text"] for r in train} & {r["text"] for r in validation}


def test_rebuilding_gives_the_same_records(builder, tmp_path):
    again = build(tmp_path)
    for split in ("train", "validation"):
        for a, b in zip(records(again, split), records(builder, split), strict=True):
            assert a["text"] == b["text"] and np.array_equal(a["audio"], b["audio"])
