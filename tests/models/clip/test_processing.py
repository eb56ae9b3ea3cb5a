"""CLIPImageProcessor against transformers' CLIPImageProcessor (its PIL backend) on photographs
of several aspect ratios."""

import json

import pytest
import skimage.data
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from polyformer.models.clip.processing import CLIPImageProcessor
from tests.models.vit.test_processing import assert_same, forms

# openai/clip-vit-base-patch32's preprocessor_config.json, sizes given as ints.
OFFICIAL = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 224,
}


@pytest.fixture(scope="module")
def photos():
    chelsea = skimage.data.chelsea()  # 300 x 451, landscape
    return {
        "landscape": chelsea,
        "portrait": chelsea.transpose(1, 0, 2).copy(),
        "square": skimage.data.astronaut(),
        "wide": skimage.data.rocket()[:120],  # 120 x 640: shorter side grows to 224
        "small grey": skimage.data.camera()[::5, ::3],  # 103 x 171, upscaled
        "tall": skimage.data.coffee()[:, :90],  # 400 x 90
    }


@pytest.mark.parametrize(
    "settings",
    [{}, {"size": {"shortest_edge": 180}, "crop_size": {"height": 200, "width": 150}}],
    ids=["default", "crop larger than the resized image"],
)
def test_equals_transformers_on_photographs(photos, settings):
    ours, theirs = CLIPImageProcessor(**settings), CLIPImageProcessorPil(**settings)
    for name, pixels in photos.items():
        for form, image in forms(pixels).items():
            if form == "array" and pixels.ndim == 2:
                continue  # transformers reads a 2-d array as a batch of rows
            expected = theirs(image, return_tensors="np")["pixel_values"]
            assert_same(ours(image)["pixel_values"], expected, f"{name} as {form}")
    batch = ours(list(photos.values()))["pixel_values"]
    crop = ours.crop_size
    assert batch.shape == (len(photos), 3, crop["height"], crop["width"])


def test_reads_the_official_config_and_round_trips(photos, tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(OFFICIAL))
    official = CLIPImageProcessor.from_pretrained(tmp_path)
    assert official == CLIPImageProcessor()
    assert official.size == {"shortest_edge": 224}
    official.save_pretrained(tmp_path / "saved")
    theirs = CLIPImageProcessorPil.from_pretrained(tmp_path / "saved")
    image = photos["portrait"]
    assert_same(official(image)["pixel_values"], theirs(image, return_tensors="np")["pixel_values"])
    assert CLIPImageProcessor.from_pretrained(tmp_path / "saved") == official
