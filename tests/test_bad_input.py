"""Bad input gives one clear error (a ValueError subclass or FileNotFoundError naming what was
wrong and what is expected), never a wrong answer without a word nor a raw traceback: model
calls of every family with token ids, pipelines and `polyformer` commands, in-process."""

import dataclasses
import functools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import PIL.Image
import pytest
import safetensors.numpy
import soundfile
from flax import nnx
from jax.experimental import checkify

import polyformer as pf
from polyformer import cli
from polyformer.models import clip, gpt, tapas, vit, wav2vec2
from polyformer.models.clip.processing import CLIPImageProcessor
from polyformer.models.clip.tokenizer import CLIPTokenizer
from polyformer.models.gpt import GPT2Config
from polyformer.models.tapas.tokenizer import TapasTokenizer
from polyformer.models.vit.processing import ViTImageProcessor, load_image
from polyformer.models.wav2vec2.processing import Wav2Vec2FeatureExtractor
from polyformer.training.config import RunConfig
from polyformer.training.data import TextData, save_tokenizer, train_bpe
from polyformer.training.trainer import Trainer
from tests.models.tapas import tables as tapas_tables
from tests.models.wav2vec2.test_tokenizer import VOCAB

TEXT = ["def add(a, b):\n    return a + b\n", "import os\nprint(os.getcwd())\n"] * 20


def _text_models():
    """(family name, model, vocab_size, call with input_ids) for each family that takes ids."""
    g = gpt.GPT2LMHeadModel(gpt.GPT2Config.tiny(), rngs=nnx.Rngs(0))
    c = clip.CLIPModel(clip.CLIPConfig.tiny(), rngs=nnx.Rngs(0))
    t = tapas.TapasModel(tapas.TapasConfig.tiny(), rngs=nnx.Rngs(0))
    return {
        "gpt2": (g.config.vocab_size, lambda ids: g(ids).logits),
        "clip": (c.config.text_config.vocab_size, lambda ids: c.get_text_features(ids)),
        "tapas": (t.config.vocab_size, lambda ids: t(ids).last_hidden_state),
    }


@pytest.fixture(scope="module")
def text_models():
    return _text_models()


@pytest.mark.parametrize("family", ["gpt2", "clip", "tapas"])
@pytest.mark.parametrize("where", ["vocab_size", -1])
def test_token_ids_outside_the_vocabulary_are_refused(text_models, family, where):
    vocab_size, call = text_models[family]
    bad = vocab_size if where == "vocab_size" else -1
    ids = np.array([[1, 2, bad]], np.int32)
    expected = rf"input_ids hold ids from .*expected 0 to {vocab_size - 1}"
    with pytest.raises(ValueError, match=expected):
        call(ids)
    # Under jit the ids are not known: checkify reports them when asked, and is free otherwise.
    error, _ = checkify.checkify(jax.jit(call))(jnp.asarray(ids))
    with pytest.raises(checkify.JaxRuntimeError, match="input_ids hold ids from"):
        error.throw()
    good = jax.jit(call)(jnp.array([[1, 2, 3]]))
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(good))


def test_tapas_token_type_ids_outside_their_tables_are_refused():
    model = tapas.TapasModel(tapas.TapasConfig.tiny(), rngs=nnx.Rngs(0))
    types = np.zeros((1, 3, 7), np.int32)
    types[0, 1, 2] = model.config.type_vocab_sizes[2]
    with pytest.raises(ValueError, match=r"token_type_ids\[..., 2\] \(row_ids\).*expected 0 to"):
        model(np.array([[1, 2, 3]]), token_type_ids=types)


@pytest.mark.parametrize("shape", [(3,), (1, 2, 3), (1, 0)])
def test_gpt2_refuses_input_ids_of_the_wrong_rank_or_empty(text_models, shape):
    _, call = text_models["gpt2"]
    with pytest.raises(ValueError, match="input_ids must be \\[batch, length\\]"):
        call(np.ones(shape, np.int32))


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (np.zeros((1, 0), np.int32), "prompt_length >= 1"),
        (np.array([[1, 2, 1031]]), "input_ids hold ids from 1 to 1031; expected 0 to 1030"),
        (np.array([[-1, 2]]), "input_ids hold ids from -1 to 2"),
    ],
)
def test_generate_refuses_an_empty_prompt_or_ids_outside_the_vocabulary(ids, message):
    model = gpt.GPT2LMHeadModel(gpt.GPT2Config.tiny(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=re.escape(message)):
        gpt.generate(model, ids, max_new_tokens=2)


@pytest.fixture(scope="module")
def gpt_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2")
    pf.save_pretrained(gpt.GPT2LMHeadModel(gpt.GPT2Config.tiny(), rngs=nnx.Rngs(0)), path)
    save_tokenizer(train_bpe(TEXT, vocab_size=300), path)
    return path


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path):
    small = gpt.GPT2Config.tiny(vocab_size=280)
    pf.save_pretrained(gpt.GPT2LMHeadModel(small, rngs=nnx.Rngs(0)), tmp_path)
    save_tokenizer(train_bpe(TEXT, vocab_size=300), tmp_path)
    with pytest.raises(ValueError, match="has 291 tokens but the model.s vocab_size is 280"):
        pf.pipeline("text-generation", tmp_path)


@pytest.mark.parametrize(
    "prompts, kwargs, message",
    [
        (3, {}, "prompts must be a string or a list of strings, got int"),
        (["a", 3], {}, "prompts must be a string or a list of strings"),
        ("def", {"max_new_tokens": 2.0}, "max_new_tokens must be an int, got 2.0"),
        ("def", {"do_sample": True, "top_k": 3.5}, "top_k must be an int, got 3.5"),
        (
            "def",
            {"do_sample": True, "top_p": 1.5, "max_new_tokens": 2, "rng": 0},
            r"top_p must satisfy 0 < top_p <= 1, got 1.5",
        ),
        (
            "def",
            {"do_sample": True, "top_p": float("nan"), "max_new_tokens": 2, "rng": 0},
            "top_p must satisfy",
        ),
        (
            "def",
            {"do_sample": True, "temperature": float("nan"), "max_new_tokens": 2, "rng": 0},
            "temperature",
        ),
    ],
)
def test_text_generation_refuses_wrong_argument_types(gpt_checkpoint, prompts, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pf.pipeline("text-generation", gpt_checkpoint)(prompts, **kwargs)


def _cli(argv, capsys):
    """(exit code, stderr) of `polyformer ARGV` run in this process."""
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("option", [["--temperature", "0.5"], ["--top-k", "3"], ["--seed", "1"]])
def test_cli_generate_sampling_options_need_sample(gpt_checkpoint, capsys, option):
    code, err = _cli(["generate", gpt_checkpoint, "def", *option], capsys)
    assert code == 2 and f"{option[0]} only apply to sampling: add --do-sample" in err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def asr_checkpoint(tmp_path_factory):
    """A random Wav2Vec2ForCTC with its feature extractor, vocab.json and one second of sound."""
    path = tmp_path_factory.mktemp("asr")
    model = wav2vec2.Wav2Vec2ForCTC(wav2vec2.Wav2Vec2Config.tiny(vocab_size=32), rngs=nnx.Rngs(0))
    pf.save_pretrained(model, path)
    Wav2Vec2FeatureExtractor().save_pretrained(path)
    (path / "vocab.json").write_text(json.dumps(VOCAB))
    soundfile.write(path / "tone.wav", np.sin(np.arange(16000) / 10).astype(np.float32), 16000)
    return path


@pytest.fixture(scope="module")
def asr(asr_checkpoint):
    return pf.pipeline("automatic-speech-recognition", asr_checkpoint)


SECOND = np.zeros(16000, np.float32)


@pytest.mark.parametrize(
    "inputs, kwargs, message",
    [
        (np.array([0.1, np.nan] * 800), {}, "1600 samples are NaN or inf; expected finite"),
        (np.array([0.1, np.inf] * 800), {}, "NaN or inf"),
        ({"raw": SECOND, "sampling_rate": 0}, {}, "sampling_rate must be a positive whole"),
        (SECOND, {"sampling_rate": 0}, "sampling_rate must be a positive whole"),
        (SECOND, {"chunk_length_s": 0.5, "stride_length_s": -0.1}, "stride_length_s must be a"),
        (SECOND, {"chunk_length_s": float("nan")}, "chunk_length_s must be a finite number"),
        (SECOND, {"stride_length_s": (0.1, 0.1, 0.1)}, "one number or \\(left, right\\)"),
        (3, {}, "audio must be a file path, a float array"),
        (b"RIFF", {}, "audio must be a file path, a float array"),
        (np.array(["a", "b"]), {}, "audio samples must be numbers"),
    ],
)
def test_speech_recognition_refuses_bad_audio_and_options(asr, inputs, kwargs, message):
    with pytest.raises(ValueError, match=message):
        asr(inputs, **kwargs)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--chunk-length-s", "nan"], "chunk_length_s must be a finite number of seconds >= 0"),
        (["--stride-length-s", "-1"], "stride_length_s must be a finite number of seconds >= 0"),
    ],
)
def test_cli_transcribe_refuses_bad_chunking(asr_checkpoint, capsys, options, message):
    code, err = _cli(["transcribe", asr_checkpoint, asr_checkpoint / "tone.wav", *options], capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_cli_transcribe_names_the_files_that_failed_and_prints_the_others(
    asr_checkpoint, tmp_path, capsys
):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not a sound")
    tone = asr_checkpoint / "tone.wav"
    code = cli.main(["transcribe", str(asr_checkpoint), str(broken), str(tone), "nowhere.wav"])
    out, err = capsys.readouterr()
    assert code == 2 and out.startswith(f"{tone}: ")
    assert f"{broken}: " in err and "no audio file at nowhere.wav" in err
    assert f"2 of 3 files not transcribed: {broken}, nowhere.wav" in err


@pytest.fixture(scope="module")
def vit_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("vit")
    pf.save_pretrained(vit.ViTForImageClassification(vit.ViTConfig.tiny(), rngs=nnx.Rngs(0)), path)
    ViTImageProcessor(size={"height": 20, "width": 20}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def clip_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip")
    tokenizer = CLIPTokenizer.train(TEXT, 600)
    tokenizer.save_pretrained(path)
    text = clip.CLIPConfig.tiny().text_config
    text = dataclasses.replace(
        text, vocab_size=600, max_position_embeddings=77, bos_token_id=598, eos_token_id=2
    )
    model = clip.CLIPModel(clip.CLIPConfig.tiny(text_config=text), rngs=nnx.Rngs(0))
    pf.save_pretrained(model, path)
    CLIPImageProcessor(size=20, crop_size=20).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tapas_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tapas")
    tapas_tables.write_vocab(path)
    tokenizer = TapasTokenizer.from_pretrained(path)
    config = tapas.TapasConfig.tiny(vocab_size=len(tokenizer), max_position_embeddings=512)
    pf.save_pretrained(tapas.TapasForQuestionAnswering(config, rngs=nnx.Rngs(0)), path)
    return path


def _image(tmp_path, name, array):
    PIL.Image.fromarray(array).save(tmp_path / name)
    return tmp_path / name


def test_16_bit_and_float_images_are_converted_by_their_range(tmp_path):
    ramp = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    expected = np.round(ramp * 255).astype(np.uint8)
    sixteen = _image(tmp_path, "ramp.png", np.round(ramp * 65535).astype(np.uint16))
    floating = _image(tmp_path, "ramp.tif", ramp.astype(np.float32))
    for path in (sixteen, floating):
        rgb = np.asarray(load_image(path))
        assert rgb.shape == (64, 64, 3)
        np.testing.assert_allclose(rgb[..., 0], expected, atol=1)
    hot = _image(tmp_path, "hot.tif", (ramp * 3).astype(np.float32))
    with pytest.raises(ValueError, match="hot.tif: a F image with values from 0.0 to 3.0"):
        load_image(hot)


def test_a_decompression_bomb_is_refused_with_the_reason(tmp_path, monkeypatch):
    path = _image(tmp_path, "big.png", np.zeros((40, 40, 3), np.uint8))
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ValueError, match="big.png has more pixels than PIL reads"):
        load_image(path)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("image_std", [0.5, 0.0, 0.5], "image_std must be finite and > 0"),
        ("image_mean", [0.5, float("nan"), 0.5], "image_mean must be finite"),
        ("rescale_factor", 0, "rescale_factor must be finite and > 0"),
        ("size", "big", "size must be"),
    ],
)
def test_a_bad_preprocessor_config_is_named(vit_checkpoint, tmp_path, field, value, message):
    config = json.loads((vit_checkpoint / "preprocessor_config.json").read_text())
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(ValueError, match=rf"preprocessor_config.json: .*{message}"):
        ViTImageProcessor.from_pretrained(tmp_path)


def test_an_invalid_preprocessor_config_is_named(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="preprocessor_config.json"):
        ViTImageProcessor.from_pretrained(tmp_path)


@pytest.mark.parametrize("tokenizer", [gpt.GPT2Tokenizer, CLIPTokenizer])
def test_damaged_tokenizer_files_are_named(tmp_path, tokenizer):
    (tmp_path / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(ValueError, match="tokenizer.json is not a tokenizer.json"):
        tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "vocab.json").write_text('["a", "b"]')
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(ValueError, match="vocab.json and .*merges.txt are not a BPE vocabulary"):
        tokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize("dtype", [np.int32, np.bool_])
def test_integer_or_bool_weights_are_refused(tmp_path, dtype):
    model = gpt.GPT2LMHeadModel(gpt.GPT2Config.tiny(), rngs=nnx.Rngs(0))
    pf.save_pretrained(model, tmp_path)
    tensors = safetensors.numpy.load_file(tmp_path / "model.safetensors")
    tensors["transformer.h.0.ln_1.weight"] = tensors["transformer.h.0.ln_1.weight"].astype(dtype)
    safetensors.numpy.save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(pf.hub.CheckpointMismatchError, match=r"not floating-point \(1\)"):
        pf.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "images, message",
    [
        (3, r"images: one or a list of them\), not a int"),
        (b"\x89PNG", "an image is a file path"),
        ([PIL.Image.new("RGB", (8, 8)), 3], "an image is a file path"),
        (np.zeros((8, 8, 3), np.float32), "holds uint8 pixel values"),
    ],
)
@pytest.mark.parametrize("task", ["image-classification", "zero-shot-image-classification"])
def test_image_pipelines_refuse_what_is_not_an_image(
    vit_checkpoint, clip_checkpoint, task, images, message
):
    if task == "image-classification":
        call = pf.pipeline(task, vit_checkpoint)
    else:
        call = functools.partial(pf.pipeline(task, clip_checkpoint), candidate_labels=["a", "b"])
    with pytest.raises(ValueError, match=message):
        call(images)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hypothesis_template": "a {} of a {}"}, "must hold one {} where the label goes"),
        ({"hypothesis_template": "a {label}{}"}, "and no other braces"),
        ({"candidate_labels": ["cat", 3]}, "candidate_labels is a list of label strings"),
        ({"candidate_labels": "cat"}, "candidate_labels is a list of label strings"),
    ],
)
def test_zero_shot_refuses_bad_labels_and_templates(clip_checkpoint, kwargs, message):
    pipe = pf.pipeline("zero-shot-image-classification", clip_checkpoint)
    with pytest.raises(ValueError, match=message):
        pipe(PIL.Image.new("RGB", (8, 8)), **{"candidate_labels": ["cat", "dog"], **kwargs})


@pytest.mark.parametrize(
    "table, queries, message",
    [
        (3, "how many?", "a table is a pandas DataFrame or a CSV file path, got int"),
        ("chapters", 3, "queries is a question or a list of them, got 3"),
        ("chapters", ["how many?", None], "queries is a question or a list of them"),
        ("long", "how many?", r"token_type_ids\[..., 2\] \(row_ids\) hold ids from 0 to 20"),
    ],
)
def test_table_qa_refuses_bad_tables_and_questions(tapas_checkpoint, table, queries, message):
    tables = {
        "chapters": tapas_tables.chapters(),
        "long": pd.DataFrame({"n": [str(i) for i in range(20)]}),
    }
    pipe = pf.pipeline("table-question-answering", tapas_checkpoint)
    with pytest.raises(ValueError, match=message):
        pipe(tables.get(table, table), queries)


@pytest.mark.parametrize("threshold", [1.0, -0.1, float("nan")])
def test_table_qa_refuses_a_threshold_that_is_not_a_probability(tapas_checkpoint, threshold):
    pipe = pf.pipeline("table-question-answering", tapas_checkpoint)
    with pytest.raises(
        ValueError, match=r"cell_classification_threshold is a probability in \[0, 1\)"
    ):
        pipe(tapas_tables.chapters(), "how many?", cell_classification_threshold=threshold)


def test_an_out_dir_that_cannot_be_written_is_refused_before_compiling(tmp_path):
    (tmp_path / "file").write_text("")
    config = RunConfig(
        model=GPT2Config.tiny(), data=TextData(seq_len=8), out_dir=str(tmp_path / "file" / "run")
    )
    with pytest.raises(ValueError, match=r"out_dir='.*/file/run' cannot be written \(.*\); give"):
        Trainer(config, data=None)


@pytest.mark.parametrize(
    "task, fixture",
    [
        ("text-generation", "clip_checkpoint"),
        ("image-classification", "gpt_checkpoint"),
        ("table-question-answering", "vit_checkpoint"),
        ("automatic-speech-recognition", "tapas_checkpoint"),
        ("zero-shot-image-classification", "asr_checkpoint"),
    ],
)
def test_a_pipeline_names_the_family_it_needs(request, task, fixture):
    path = request.getfixturevalue(fixture)
    with pytest.raises(ValueError, match=f"checkpoint; {task} needs {pf.pipelines.TASKS[task]}"):
        pf.pipeline(task, path)


@pytest.mark.parametrize(
    "command, fixture, arguments",
    [
        ("generate", "gpt_checkpoint", ["def", "--max-new-tokens", "-1"]),
        ("classify", "vit_checkpoint", ["missing.png"]),
        ("classify", "gpt_checkpoint", ["missing.png"]),
        ("zero-shot", "clip_checkpoint", ["missing.png", "--labels", "a,b", "--template", "{}{}"]),
        ("table-qa", "tapas_checkpoint", ["missing.csv", "how many?"]),
        ("transcribe", "asr_checkpoint", ["missing.wav"]),
    ],
)
def test_every_command_reports_bad_input_in_one_line(request, capsys, command, fixture, arguments):
    code, err = _cli([command, request.getfixturevalue(fixture), *arguments], capsys)
    assert code == 2 and err.startswith(f"polyformer {command}: ") and "Traceback" not in err


@pytest.mark.parametrize(
    "text, suffix, message",
    [
        ("def config(:\n", ".py", r"bad\.py, line 1: invalid syntax"),
        ("model: gpt2\n", ".yaml", r"a run config is a Python file defining config\(\)"),
    ],
)
def test_cli_train_names_a_run_config_it_cannot_read(tmp_path, capsys, text, suffix, message):
    path = tmp_path / f"bad{suffix}"
    path.write_text(text)
    code, err = _cli(["train", path], capsys)
    assert code == 2 and re.search(message, err) and "Traceback" not in err


@pytest.mark.parametrize("top_k", [2.5, "3", 0])
def test_image_classification_refuses_a_top_k_that_is_not_a_count(vit_checkpoint, top_k):
    classify = pf.pipeline("image-classification", vit_checkpoint)
    with pytest.raises(ValueError, match="top_k must be at least 1 \\(an int"):
        classify(PIL.Image.new("RGB", (8, 8)), top_k=top_k)


@pytest.mark.parametrize(
    "load_kwargs, message",
    [
        ({"dtype": "float32x"}, "dtype must be a floating-point dtype"),
        ({"dtype": jnp.int32}, "dtype must be a floating-point dtype"),
        ({"attention": "favor"}, "attention must be a kernel"),
    ],
)
def test_from_pretrained_refuses_a_bad_dtype_or_kernel(gpt_checkpoint, load_kwargs, message):
    with pytest.raises(ValueError, match=message):
        pf.from_pretrained(gpt_checkpoint, **load_kwargs)
