"""`pf.pipeline("zero-shot-image-classification")` and `polyformer zero-shot` against transformers'
pipeline on a random-weight CLIP checkpoint with our processor and tokenizer files."""

import sysconfig
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import skimage.data
import transformers

import polyformer as pf
from polyformer import cli
from polyformer.models.clip.pipeline import ZeroShotImageClassificationPipeline
from polyformer.models.clip.processing import CLIPImageProcessor
from polyformer.models.clip.tokenizer import CLIPTokenizer
from tests.models.clip.reference import random_hf_model
from tests.models.vit.test_pipeline import assert_same_results

LABELS = ["a photo of a cat", "a photo of an astronaut", "a cup of coffee", "a rocket launch"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip")
    files = sorted(Path(sysconfig.get_paths()["stdlib"], "json").glob("*.py"))
    tokenizer = CLIPTokenizer.train([f.read_text(encoding="utf-8") for f in files], 1200)
    tokenizer.save_pretrained(path)
    # The official checkpoint's legacy eos_token_id 2: pooling at the largest id, <|endoftext|>.
    text = dict(vocab_size=1200, max_position_embeddings=77, bos_token_id=1198, eos_token_id=2)
    random_hf_model(text_config=text).save_pretrained(path)
    processor = CLIPImageProcessor(
        size={"shortest_edge": 20}, crop_size={"height": 20, "width": 20}
    )
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pipes(checkpoint):
    return (
        pf.pipeline("zero-shot-image-classification", checkpoint),
        transformers.pipeline("zero-shot-image-classification", model=str(checkpoint)),
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    PIL.Image.fromarray(skimage.data.chelsea()).save(folder / "cat.png")
    astronaut = PIL.Image.fromarray(skimage.data.astronaut()).convert("RGBA")
    astronaut.putalpha(100)  # the pipeline drops transparency, as transformers' does
    return [str(folder / "cat.png"), astronaut, PIL.Image.fromarray(skimage.data.coffee())]


def test_equals_transformers_pipeline(pipes, images):
    ours, theirs = pipes
    for image in images:
        assert_same_results(ours(image, LABELS), theirs(image, candidate_labels=LABELS))
    for template in ("{}", "a picture: {}!"):
        assert_same_results(
            ours(images[0], LABELS, hypothesis_template=template),
            theirs(images[0], candidate_labels=LABELS, hypothesis_template=template),
        )
    batch = ours(images, candidate_labels=["cat", "dog"])
    assert len(batch) == 3 and all({r["label"] for r in b} == {"cat", "dog"} for b in batch)
    for result in batch:
        assert sum(r["score"] for r in result) == pytest.approx(1, abs=1e-6)
        assert result[0]["score"] >= result[1]["score"]
    array = ours(skimage.data.coffee(), LABELS)  # arrays too (transformers takes none)
    assert_same_results(array, theirs(images[2], candidate_labels=LABELS))


def test_rejects_bad_labels(pipes, images):
    ours = pipes[0]
    with pytest.raises(ValueError, match="candidate_labels is a list"):
        ours(images[0], "cat,dog")
    with pytest.raises(ValueError, match="candidate_labels is a list"):
        ours(images[0], [])
    with pytest.raises(ValueError, match="hypothesis_template must hold"):
        ours(images[0], LABELS, hypothesis_template="a photo")
    with pytest.raises(ValueError, match="more than max_length 77"):
        ours(images[0], ["cat", "very " * 80 + "long"])
    with pytest.raises(ValueError, match="needs a CLIPModel"):
        ZeroShotImageClassificationPipeline(
            ours.model.text_model, ours.image_processor, ours.tokenizer
        )


def test_cli_zero_shot_prints_every_label_of_each_image(checkpoint, pipes, images, capsys):
    files = [images[0]]
    argv = ["zero-shot", str(checkpoint), *files, "--labels", "a photo of a cat, a cup of coffee"]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = pipes[0](files[0], ["a photo of a cat", "a cup of coffee"])
    assert lines == [files[0]] + [f"  {r['score']:.4f}  {r['label']}" for r in expected]
    assert cli.main([*argv, "--template", "{}"]) == 0
    expected = pipes[0](files[0], ["a photo of a cat", "a cup of coffee"], hypothesis_template="{}")
    assert capsys.readouterr().out.splitlines()[1] == (
        f"  {expected[0]['score']:.4f}  {expected[0]['label']}"
    )
    np.testing.assert_array_less(0, [r["score"] for r in expected])


def test_cli_zero_shot_reports_errors_without_a_traceback(checkpoint, capsys, tmp_path):
    missing = str(tmp_path / "missing.png")
    assert cli.main(["zero-shot", str(checkpoint), missing, "--labels", "cat,dog"]) == 2
    assert "no image file" in capsys.readouterr().err
    PIL.Image.new("RGB", (8, 8)).save(tmp_path / "black.png")
    image = str(tmp_path / "black.png")
    assert cli.main(["zero-shot", str(checkpoint), image, "--labels", "cat,,dog"]) == 2
    assert "comma-separated" in capsys.readouterr().err
