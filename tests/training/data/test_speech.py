"""SpokenDigitsData: espeak-ng speech as the arrays the trainer and the CTC objective read."""

import numpy as np
import pytest
import transformers

from polyformer.datasets.spoken_digits import espeak_available
from polyformer.models.wav2vec2.processing import Wav2Vec2FeatureExtractor
from polyformer.models.wav2vec2.tokenizer import Wav2Vec2CTCTokenizer
from polyformer.training.data.speech import SpokenDigitsData, add_noise, ctc_vocab

pytestmark = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")

SMALL = dict(num_utterances=20, validation_percent=30, max_symbols=3, symbols="0123456789")


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return SpokenDigitsData(data_dir=str(tmp_path_factory.mktemp("tfds")), **SMALL)


@pytest.fixture(scope="module")
def data(spec):
    return spec.load()


def test_arrays_are_padded_audio_and_ctc_labels(spec, data):
    tokenizer = spec.tokenizer()
    _, texts = spec.records("validation")
    for arrays in (data.train, data.eval):
        values, mask, labels = arrays["input_values"], arrays["attention_mask"], arrays["labels"]
        assert values.dtype == np.float32 and mask.dtype == np.int32 and labels.dtype == np.int32
        assert values.shape == mask.shape and values.shape[1] % 320 == 0
        assert np.all(values[mask == 0] == 0.0)
        for row, length in zip(values, mask.sum(-1), strict=True):  # normalised real samples
            assert abs(row[:length].mean()) < 1e-4 and abs(row[:length].std() - 1) < 1e-3
        assert np.all(
            (labels >= 0) == (np.arange(labels.shape[1]) < (labels >= 0).sum(-1)[:, None])
        )
    decoded = [tokenizer.decode(r[r >= 0], group_tokens=False) for r in data.eval["labels"]]
    assert decoded == texts
    assert data.model_overrides == {
        "vocab_size": 15, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
    }  # fmt: skip
    assert data.tokens_per_example == data.train["input_values"].shape[1] // 320


def test_vocab_puts_the_blank_first():
    assert ctc_vocab("AB") == {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "A": 5, "B": 6}


def test_saved_processor_files_load_in_transformers(spec, tmp_path):
    spec.save(tmp_path)
    assert transformers.Wav2Vec2CTCTokenizer.from_pretrained(tmp_path).get_vocab() == ctc_vocab(
        "0123456789"
    )
    assert transformers.Wav2Vec2FeatureExtractor.from_pretrained(tmp_path).return_attention_mask
    assert Wav2Vec2CTCTokenizer.from_pretrained(tmp_path) == spec.tokenizer()
    assert Wav2Vec2FeatureExtractor.from_pretrained(tmp_path) == spec.feature_extractor()


def test_noise_touches_real_samples_only_and_is_seeded(data):
    batch = {k: v[:4] for k, v in data.train.items()}
    noisy = add_noise(0.1)(batch, np.random.default_rng(0))
    again = add_noise(0.1)(batch, np.random.default_rng(0))
    np.testing.assert_array_equal(noisy["input_values"], again["input_values"])
    changed = noisy["input_values"] != batch["input_values"]
    assert np.array_equal(changed, batch["attention_mask"] == 1)
    np.testing.assert_array_equal(noisy["labels"], batch["labels"])


def test_each_parameter_set_has_its_own_dataset():
    a, b = SpokenDigitsData(**SMALL), SpokenDigitsData(**dict(SMALL, max_symbols=4))
    assert a.dataset_config().name != b.dataset_config().name
    assert a.dataset_config().name == SpokenDigitsData(**SMALL).dataset_config().name


@pytest.mark.parametrize("bad", [dict(symbols="AA"), dict(symbols="A|"), dict(noise_std=-1.0)])
def test_bad_configs_are_errors(bad):
    with pytest.raises(ValueError):
        SpokenDigitsData(**bad)
