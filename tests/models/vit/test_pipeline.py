"""`pf.pipeline("image-classification")` and `polyformer classify` against transformers' pipeline
on a random-weight ViT checkpoint with our preprocessor_config.json."""

import json
import shutil

import numpy as np
import PIL.Image
import pytest
import skimage.data
import torch
import transformers

import polyformer as pf
from polyformer import cli
from polyformer.models.vit.pipeline import ImageClassificationPipeline
from polyformer.models.vit.processing import ViTImageProcessor
from tests.models.vit.reference import random_hf_model

LABELS = ["tabby cat", "astronaut", "coffee cup", "rocket", "grey, with a comma"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("vit-classifier")
    model = random_hf_model(
        id2label=dict(enumerate(LABELS)), label2id={label: i for i, label in enumerate(LABELS)}
    )
    with torch.no_grad():  # spread the scores so that the ranking means something
        model.classifier.weight.mul_(30)
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": 20, "width": 20}, resample=3).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A photograph as a file, a PIL image (RGBA: the pipeline drops alpha) and an array."""
    folder = tmp_path_factory.mktemp("photos")
    PIL.Image.fromarray(skimage.data.chelsea()).save(folder / "cat.png")
    rocket = PIL.Image.fromarray(skimage.data.rocket()).convert("RGBA")
    rocket.putalpha(128)
    return [str(folder / "cat.png"), rocket, skimage.data.coffee()]


def assert_same_results(ours, theirs):
    assert [r["label"] for r in ours] == [r["label"] for r in theirs]
    np.testing.assert_allclose(
        [r["score"] for r in ours], [r["score"] for r in theirs], rtol=0, atol=1e-5
    )


def test_equals_transformers_pipeline(checkpoint, images):
    ours = pf.pipeline("image-classification", checkpoint)
    theirs = transformers.pipeline("image-classification", model=str(checkpoint))
    for top_k in (1, 3, 5, 9):
        assert_same_results(ours(images[0], top_k=top_k), theirs(images[0], top_k=top_k))
    batch = ours(images, top_k=None)
    assert len(batch) == 3 and all(len(result) == 5 for result in batch)
    for result, image in zip(batch, images, strict=True):
        assert_same_results(result, theirs(image, top_k=5))
    assert len({r[0]["label"] for r in batch}) > 1  # the images are told apart
    assert len(ours(images[1])) == 5  # transformers' default top_k


def test_scores_follow_the_problem_type(checkpoint, tmp_path):
    """transformers applies a sigmoid for multi-label classifiers (config.json's problem_type)."""
    shutil.copytree(checkpoint, tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config["problem_type"] = "multi_label_classification"
    (tmp_path / "config.json").write_text(json.dumps(config))
    ours = pf.pipeline("image-classification", tmp_path)
    assert ours.function_to_apply == "sigmoid"
    image = skimage.data.astronaut()
    theirs = transformers.pipeline("image-classification", model=str(tmp_path))
    assert_same_results(ours(image), theirs(image))


def test_rejects_bad_arguments(checkpoint):
    pipe = pf.pipeline("image-classification", checkpoint)
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        pipe(skimage.data.astronaut(), top_k=0)
    with pytest.raises(ValueError, match="at least one image"):
        pipe([])
    with pytest.raises(ValueError, match="function_to_apply must be one of"):
        ImageClassificationPipeline(pipe.model, pipe.image_processor, "softplus")
    with pytest.raises(ValueError, match="needs a ViTForImageClassification"):
        ImageClassificationPipeline(pipe.model.vit, pipe.image_processor)


def test_cli_classify_prints_the_top_labels_of_each_image(checkpoint, images, capsys, tmp_path):
    PIL.Image.fromarray(images[2]).save(tmp_path / "coffee.jpg")
    files = [images[0], str(tmp_path / "coffee.jpg")]
    assert cli.main(["classify", str(checkpoint), *files, "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = pf.pipeline("image-classification", checkpoint)(files, top_k=2)
    assert lines[0] == files[0] and lines[3] == files[1] and len(lines) == 6
    for line, result in zip(lines[1:3] + lines[4:6], expected[0] + expected[1], strict=True):
        assert line == f"  {result['score']:.4f}  {result['label']}"


def test_cli_classify_reports_bad_images_without_a_traceback(checkpoint, capsys, tmp_path):
    assert cli.main(["classify", str(checkpoint), str(tmp_path / "missing.jpg")]) == 2
    assert "no image file" in capsys.readouterr().err
    (tmp_path / "notes.jpg").write_text("not a picture")
    assert cli.main(["classify", str(checkpoint), str(tmp_path / "notes.jpg")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert cli.main(["classify", str(tmp_path), str(tmp_path / "notes.jpg")]) == 2
    assert "config.json" in capsys.readouterr().err
