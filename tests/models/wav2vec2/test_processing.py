"""Wav2Vec2FeatureExtractor against transformers' on espeak-ng speech; audio loading."""

import numpy as np
import pytest
import soundfile
import transformers

from polyformer.models.wav2vec2.processing import (
    Wav2Vec2FeatureExtractor,
    load_audio,
    resample,
)
from tests.models.wav2vec2.speech import needs_espeak, speech

pytestmark = needs_espeak


@pytest.fixture(scope="module")
def waves():
    # Different lengths, one scaled up and offset so that normalisation has work to do.
    return [
        speech("seven two nine"),
        speech("hello world", voice="en-gb+f3", speed=220) * 3.0 + 0.1,
        speech("A", pitch=80)[:3001].astype(np.float64),
    ]


@pytest.mark.parametrize("return_attention_mask", [False, True])
@pytest.mark.parametrize("do_normalize", [False, True])
@pytest.mark.parametrize("padding", [True, False])
def test_matches_transformers(waves, return_attention_mask, do_normalize, padding):
    kwargs = dict(return_attention_mask=return_attention_mask, do_normalize=do_normalize)
    ours = Wav2Vec2FeatureExtractor(**kwargs)
    theirs = transformers.Wav2Vec2FeatureExtractor(**kwargs)
    batch = waves if padding else [waves[0], waves[0][::-1].copy()]
    got = ours(batch, sampling_rate=16000, padding=padding)
    want = theirs(batch, sampling_rate=16000, padding=padding, return_tensors="np")
    assert set(got) == set(want)
    np.testing.assert_allclose(got["input_values"], want["input_values"], rtol=0, atol=1e-6)
    assert got["input_values"].dtype == np.float32
    if return_attention_mask:
        np.testing.assert_array_equal(got["attention_mask"], want["attention_mask"])


def test_single_waveform_and_pad_to_multiple(waves):
    ours = Wav2Vec2FeatureExtractor(return_attention_mask=True)
    theirs = transformers.Wav2Vec2FeatureExtractor(return_attention_mask=True)
    got = ours(waves[0], pad_to_multiple_of=1000)
    want = theirs(waves[0], sampling_rate=16000, padding=True, pad_to_multiple_of=1000,
                  return_tensors="np")  # fmt: skip
    assert got["input_values"].shape == (1, -(-len(waves[0]) // 1000) * 1000)
    np.testing.assert_allclose(got["input_values"], want["input_values"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got["attention_mask"], want["attention_mask"])


def test_pads_to_max_length(waves):
    ours = Wav2Vec2FeatureExtractor(return_attention_mask=True)
    theirs = transformers.Wav2Vec2FeatureExtractor(return_attention_mask=True)
    got = ours(waves, padding="max_length", max_length=50000)
    want = theirs(waves, sampling_rate=16000, padding="max_length", max_length=50000,
                  return_tensors="np")  # fmt: skip
    assert got["input_values"].shape == (3, 50000)
    np.testing.assert_allclose(got["input_values"], want["input_values"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got["attention_mask"], want["attention_mask"])
    with pytest.raises(ValueError, match="max_length"):
        ours(waves, padding="max_length", max_length=100)


def test_config_round_trips_with_transformers(tmp_path):
    ours = Wav2Vec2FeatureExtractor(return_attention_mask=True, padding_value=0.5)
    ours.save_pretrained(tmp_path)
    theirs = transformers.Wav2Vec2FeatureExtractor.from_pretrained(tmp_path)
    assert theirs.return_attention_mask and theirs.padding_value == 0.5
    theirs.save_pretrained(tmp_path / "hf")
    assert Wav2Vec2FeatureExtractor.from_pretrained(tmp_path / "hf") == ours


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((2, 3, 400)), "mono"),
        ([np.zeros(400), np.zeros(300)], "padding=True"),
        ([np.zeros(0)], "empty"),
    ],
)
def test_bad_input_says_what_is_expected(bad, message):
    with pytest.raises(ValueError, match=message):
        Wav2Vec2FeatureExtractor()(bad, padding=message != "padding=True")


def test_wrong_sampling_rate_is_an_error():
    with pytest.raises(ValueError, match="resample"):
        Wav2Vec2FeatureExtractor()(np.zeros(400), sampling_rate=8000)


def test_load_audio_mixes_down_and_resamples(tmp_path):
    mono = speech("nine")
    at_22k = resample(mono, 16000, 22050)
    stereo = np.stack([at_22k, 0.5 * at_22k], axis=1)
    soundfile.write(tmp_path / "stereo.flac", stereo, 22050)
    audio, info = load_audio(tmp_path / "stereo.flac", 16000)
    assert info.channels == 2 and info.mixed_down and info.resampled_to == 16000
    assert info.sampling_rate == 22050 and len(info.notes()) == 2
    # Down then up again: the same speech within the resampler's and FLAC's precision.
    assert abs(len(audio) - len(mono)) <= 1
    n = min(len(audio), len(mono))
    np.testing.assert_allclose(audio[:n], 0.75 * mono[:n], atol=2e-3)

    soundfile.write(tmp_path / "mono.wav", mono, 16000)
    audio, info = load_audio(tmp_path / "mono.wav", 16000)
    assert not info.notes()
    np.testing.assert_allclose(audio, mono, atol=1 / 32768)


def test_load_audio_rejects_what_is_not_audio(tmp_path):
    (tmp_path / "x.wav").write_text("not audio")
    with pytest.raises(ValueError, match="not a sound file"):
        load_audio(tmp_path / "x.wav", 16000)
    with pytest.raises(FileNotFoundError):
        load_audio(tmp_path / "missing.wav", 16000)


def test_an_invalid_preprocessor_config_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no preprocessor_config.json in"):
        Wav2Vec2FeatureExtractor.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text("{'single': 'quotes'}")
    with pytest.raises(ValueError, match=r"preprocessor_config\.json is not valid JSON"):
        Wav2Vec2FeatureExtractor.from_pretrained(tmp_path)
