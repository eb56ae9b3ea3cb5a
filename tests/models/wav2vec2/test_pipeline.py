"""The speech-recognition pipeline and `polyformer transcribe` against transformers' pipeline,
on espeak-ng speech and a random-weight checkpoint that both load."""

import json

import numpy as np
import pytest
import soundfile
import torch
import transformers
from transformers.pipelines.automatic_speech_recognition import chunk_iter, rescale_stride

import polyformer as pf
from polyformer import cli
from polyformer.models.wav2vec2.pipeline import chunk_spans, stride_frames
from polyformer.models.wav2vec2.processing import resample
from tests.models.wav2vec2.reference import TINY, random_hf_model
from tests.models.wav2vec2.speech import needs_espeak, speech
from tests.models.wav2vec2.test_tokenizer import VOCAB

pytestmark = needs_espeak
CHUNKED = dict(chunk_length_s=1.0, stride_length_s=0.25)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random-weight Wav2Vec2ForCTC with facebook's 32-character vocabulary, saved by
    transformers with its feature extractor and tokenizer, and transformers' pipeline on it."""
    directory = tmp_path_factory.mktemp("asr")
    model = random_hf_model(dict(TINY, vocab_size=32), seed=3)
    model.save_pretrained(directory)
    transformers.Wav2Vec2FeatureExtractor().save_pretrained(directory)
    (directory / "vocab.json").write_text(json.dumps(VOCAB))
    tokenizer = transformers.Wav2Vec2CTCTokenizer(str(directory / "vocab.json"))
    tokenizer.save_pretrained(directory)
    hf = transformers.pipeline(
        "automatic-speech-recognition",
        model=model,
        tokenizer=tokenizer,
        feature_extractor=transformers.Wav2Vec2FeatureExtractor(),
    )
    return directory, hf


@pytest.fixture(scope="module")
def local_model(tmp_path_factory):
    """A random Wav2Vec2ForCTC whose frames see only their own stretch of audio: LayerNorm
    feature encoder, attention outputs and positional convolution zeroed. Chunked and whole
    transcripts can then differ only through the stitching."""
    directory = tmp_path_factory.mktemp("local")
    config = dict(TINY, vocab_size=32, feat_extract_norm="layer", conv_bias=True)
    model = random_hf_model(config, seed=4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            # The positional convolution's weight-norm magnitude g (original0) and bias; its
            # direction v stays, as v = 0 would make the normalised weight 0 / 0.
            if "attention.out_proj" in name or ("pos_conv" in name and "original1" not in name):
                p.zero_()
        # Large output weights, so that the frames' argmax follows the audio.
        model.lm_head.weight.normal_(0.0, 1.0)
    model.save_pretrained(directory)
    # Unnormalised input: normalising each chunk on its own would shift near-tied frames.
    transformers.Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(directory)
    (directory / "vocab.json").write_text(json.dumps(VOCAB))
    return pf.pipeline("automatic-speech-recognition", directory)


def test_chunked_equals_whole_for_a_local_model(local_model, utterance):
    whole = local_model(utterance, chunk_length_s=0)["text"]
    assert len(set(whole)) > 3
    for chunk, stride in ((1.0, 0.25), (1.5, (0.2, 0.4))):
        assert local_model(utterance, chunk_length_s=chunk, stride_length_s=stride)["text"] == whole


@pytest.fixture(scope="module")
def ours(checkpoint):
    return pf.pipeline("automatic-speech-recognition", checkpoint[0])


@pytest.fixture(scope="module")
def utterance():
    return speech("seven two nine, one four, eight")  # about 2.5 s


def test_chunks_are_transformers_chunks():
    class Identity:  # chunk_iter's feature extractor, reduced to passing the chunk through
        sampling_rate = 16000

        def __call__(self, chunk, **kwargs):
            return {"input_values": chunk}

    for n in (1, 319, 8000, 16000, 16001, 40000, 41234):
        theirs = [
            (item["stride"], len(item["input_values"]))
            for item in chunk_iter(np.zeros(n), Identity(), 16000, 3200, 2560)
        ]
        spans = chunk_spans(n, 16000, 3200, 2560)
        assert [((c.end - c.start, c.left, c.right), c.end - c.start) for c in spans] == theirs
        for chunk, (stride, _) in zip(spans, theirs, strict=True):
            frames, left, right = rescale_stride([stride], 1 / 320)[0]
            assert stride_frames(chunk, 320) == (left, frames - right)
        # The kept samples tile the audio.
        kept = [(c.start + c.left, c.end - c.right) for c in spans]
        assert kept[0][0] == 0 and kept[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(kept, kept[1:], strict=False))
    with pytest.raises(ValueError, match="exceed the strides"):
        chunk_spans(1000, 400, 200, 200)


@pytest.mark.parametrize("options", [{}, CHUNKED], ids=["whole", "chunked"])
def test_transcripts_match_transformers(checkpoint, ours, utterance, options):
    _, hf = checkpoint
    want = hf(utterance.copy(), **options)["text"]
    got = ours(utterance, **options)
    assert got == {"text": want}
    assert len(set(want)) > 3  # the random model says more than one thing


@pytest.mark.parametrize("kind", ["char", "word"])
def test_timestamps_match_transformers(checkpoint, ours, utterance, kind):
    _, hf = checkpoint
    want = hf(utterance.copy(), return_timestamps=kind, **CHUNKED)
    got = ours(utterance, return_timestamps=kind, **CHUNKED)
    assert got["text"] == want["text"]
    assert [c["text"] for c in got["chunks"]] == [c["text"] for c in want["chunks"]]
    np.testing.assert_allclose(
        [c["timestamp"] for c in got["chunks"]], [c["timestamp"] for c in want["chunks"]]
    )


def test_files_are_resampled_and_mixed_down_and_reported(ours, utterance, tmp_path):
    at_22k = resample(utterance, 16000, 22050)
    soundfile.write(tmp_path / "stereo.wav", np.stack([at_22k, at_22k], axis=1), 22050)
    soundfile.write(tmp_path / "mono.flac", utterance, 16000)
    with pytest.warns(UserWarning, match="resampled from 22050 Hz"):
        stereo, mono = ours([tmp_path / "stereo.wav", str(tmp_path / "mono.flac")])
    assert len(stereo["conversions"]) == 2 and "conversions" not in mono
    assert mono["text"] == ours(utterance)["text"]
    # An array at another rate, given as transformers accepts it.
    with pytest.warns(UserWarning, match="resampled"):
        result = ours({"raw": at_22k, "sampling_rate": 22050})
    assert result["conversions"] == ["array: resampled from 22050 Hz to 16000 Hz"]
    with pytest.raises(ValueError, match="mono"):
        ours(np.zeros((2, 16000), np.float32))


def test_cli_transcribe(checkpoint, ours, utterance, tmp_path, capsys):
    soundfile.write(tmp_path / "a.wav", resample(utterance, 16000, 8000), 8000)
    soundfile.write(tmp_path / "b.flac", utterance, 16000)
    directory = str(checkpoint[0])
    assert (
        cli.main(["transcribe", directory, str(tmp_path / "a.wav"), str(tmp_path / "b.flac")]) == 0
    )
    out, err = capsys.readouterr()
    assert f"{tmp_path / 'b.flac'}: {ours(utterance)['text']}" in out.splitlines()
    assert "a.wav: resampled from 8000 Hz to 16000 Hz" in err
    assert cli.main(["transcribe", directory, str(tmp_path / "b.flac"), "--timestamps", "word",
                     "--json"]) == 0  # fmt: skip
    record = json.loads(capsys.readouterr().out)
    assert record["text"] == ours(utterance)["text"] and record["chunks"]
    assert cli.main(["transcribe", directory, str(tmp_path / "missing.wav")]) == 2
    assert "no audio file" in capsys.readouterr().err
