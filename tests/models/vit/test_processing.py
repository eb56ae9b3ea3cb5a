"""ViTImageProcessor against transformers' ViTImageProcessor (its PIL backend) on photographs."""

import json

import numpy as np
import PIL.Image
import pytest
import skimage.data
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

from polyformer.models.vit.processing import ViTImageProcessor

# RGB photographs of several aspect ratios, and greyscale ones.
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "camera", "moon"]
ODD = {
    "size": {"height": 97, "width": 131},
    "resample": 3,
    "image_mean": [0.1, 0.2, 0.3],
    "image_std": [0.3, 0.2, 0.1],
    "rescale_factor": 1 / 200,
}


@pytest.fixture(scope="module")
def photos():
    return {name: getattr(skimage.data, name)() for name in PHOTOS}


def forms(pixels: np.ndarray) -> dict:
    """The ways a user hands over one photograph: array, PIL image, RGBA (a transparency
    gradient), palette."""
    image = PIL.Image.fromarray(pixels)
    rgb = np.asarray(image.convert("RGB"))
    alpha = np.linspace(0, 255, rgb.shape[1]).astype(np.uint8)[None, :].repeat(rgb.shape[0], 0)
    rgba = np.dstack([rgb, alpha])
    return {
        "array": pixels,
        "pil": image,
        "rgba array": rgba,
        "rgba": PIL.Image.fromarray(rgba, "RGBA"),
        "palette": image.convert("P"),
    }


def assert_same(ours: np.ndarray, theirs: np.ndarray, what: str = ""):
    assert ours.dtype == np.float32 and ours.shape == theirs.shape, what
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5, err_msg=what)


@pytest.mark.parametrize("settings", [{}, ODD], ids=["default", "odd"])
def test_equals_transformers_on_photographs(photos, settings):
    ours = ViTImageProcessor(**settings)
    # transformers' ViT processor fails on grey, RGBA and palette images unless asked to convert.
    theirs = ViTImageProcessorPil(do_convert_rgb=True, **settings)
    for name, pixels in photos.items():
        for form, image in forms(pixels).items():
            if form == "array" and pixels.ndim == 2:
                continue  # transformers reads a 2-d array as a batch of rows
            expected = theirs(image, return_tensors="np")["pixel_values"]
            assert_same(ours(image)["pixel_values"], expected, f"{name} as {form}")
    grey = ours(photos["camera"])["pixel_values"]  # [height, width] arrays are grey images
    assert_same(
        grey, theirs(PIL.Image.fromarray(photos["camera"]), return_tensors="np")["pixel_values"]
    )


def test_a_batch_stacks_the_images(photos):
    images = [photos["astronaut"], photos["chelsea"], PIL.Image.fromarray(photos["camera"])]
    batch = ViTImageProcessor(**ODD)(images)["pixel_values"]
    assert batch.shape == (3, 3, 97, 131)
    theirs = ViTImageProcessorPil(do_convert_rgb=True, **ODD)(images, return_tensors="np")
    assert_same(batch, theirs["pixel_values"])


def test_files_are_read_as_transformers_reads_them(photos, tmp_path):
    """Paths: EXIF orientation applied, converted to RGB by PIL (which drops transparency)."""
    rgba = forms(photos["chelsea"])["rgba"]
    rgba.save(tmp_path / "cat.png")
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    PIL.Image.fromarray(photos["coffee"]).save(tmp_path / "coffee.jpg", exif=exif, quality=90)
    PIL.Image.fromarray(photos["camera"]).save(tmp_path / "camera.jpg")
    ours, theirs = ViTImageProcessor(**ODD), ViTImageProcessorPil(**ODD)
    for name in ("cat.png", "coffee.jpg", "camera.jpg"):
        path = tmp_path / name
        expected = theirs(str(path), return_tensors="np")["pixel_values"]
        assert_same(ours(path)["pixel_values"], expected)
        assert_same(ours(str(path))["pixel_values"], expected)
    square = ViTImageProcessor(size={"height": 50, "width": 50}, do_normalize=False)
    upright = square(tmp_path / "coffee.jpg")["pixel_values"]
    assert not np.allclose(upright, square(photos["coffee"])["pixel_values"], atol=0.1)


def test_preprocessor_config_round_trips_with_transformers(photos, tmp_path):
    ours = ViTImageProcessor(**ODD, do_center_crop=True, crop_size={"height": 64, "width": 80})
    ours.save_pretrained(tmp_path / "ours")
    theirs = ViTImageProcessorPil.from_pretrained(tmp_path / "ours")
    image = photos["rocket"]
    assert_same(ours(image)["pixel_values"], theirs(image, return_tensors="np")["pixel_values"])
    assert ours(image)["pixel_values"].shape == (1, 3, 64, 80)
    theirs.save_pretrained(tmp_path / "theirs")
    assert ViTImageProcessor.from_pretrained(tmp_path / "theirs") == ours
    assert ViTImageProcessor.from_pretrained(tmp_path / "ours") == ours


def test_reads_the_legacy_hub_config(tmp_path):
    """google/vit-base-patch16-224's preprocessor_config.json: an int size, feature extractor."""
    legacy = {
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "ViTFeatureExtractor",
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "resample": 2,
        "size": 224,
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(legacy))
    assert ViTImageProcessor.from_pretrained(tmp_path) == ViTImageProcessor()
    assert ViTImageProcessor(image_mean=0.5, image_std=0.25).image_std == (0.25,) * 3


def test_rejects_what_it_cannot_process(photos, tmp_path):
    processor = ViTImageProcessor()
    with pytest.raises(ValueError, match="uint8 pixel values.*float64"):
        processor(photos["astronaut"] / 255.0)
    with pytest.raises(ValueError, match=r"\[height, width, channels\].*\(3, 8, 8, 2\)"):
        processor(np.zeros((3, 8, 8, 2), np.uint8))
    with pytest.raises(ValueError, match="2 channels|1, 3 or 4 channels"):
        processor(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(ValueError, match="not a list"):
        processor([[photos["camera"]]])
    with pytest.raises(FileNotFoundError, match="no image file .*missing.png"):
        processor(tmp_path / "missing.png")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read .*notes.png as an image"):
        processor(str(tmp_path / "notes.png"))
    with pytest.raises(ValueError, match="different sizes"):
        ViTImageProcessor(do_resize=False)([photos["astronaut"], photos["chelsea"]])
    with pytest.raises(ValueError, match="at least one image"):
        processor([])
    with pytest.raises(ValueError, match="does not implement the settings.*do_pad"):
        ViTImageProcessor.from_hf({"do_pad": True, "pad_size": {"height": 8, "width": 8}})
    with pytest.raises(ValueError, match="size must be"):
        ViTImageProcessor(size={"longest_edge": 224})
    with pytest.raises(ValueError, match="resample must be one of"):
        ViTImageProcessor(resample=9)
    with pytest.raises(FileNotFoundError, match="no preprocessor_config.json"):
        ViTImageProcessor.from_pretrained(tmp_path)
