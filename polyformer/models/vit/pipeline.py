"""The "image-classification" pipeline: images -> the checkpoint's top labels with scores."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from polyformer.checkpoint_io import read_config
from polyformer.models.vit.model import ViTForImageClassification
from polyformer.models.vit.processing import Image, ViTImageProcessor, image_list, load_image

# transformers' `function_to_apply`: what turns logits into scores.
SCORE_FUNCTIONS = {"softmax": jax.nn.softmax, "sigmoid": jax.nn.sigmoid, "none": lambda x: x}


@nnx.jit
def _logits(model: ViTForImageClassification, pixel_values: jax.Array) -> jax.Array:
    return model(pixel_values).logits


def default_score_function(problem_type: str | None, num_labels: int) -> str:
    """What transformers' pipeline applies when not told: none for regression, sigmoid for
    multi-label or single-output classifiers, softmax otherwise."""
    if problem_type == "regression":
        return "none"
    if problem_type == "multi_label_classification" or num_labels == 1:
        return "sigmoid"
    return "softmax"


def pipeline_images(images: Image | Sequence[Image]) -> tuple[list[Image], bool]:
    """The images as transformers' pipelines hand them to the processor (files and PIL images
    through `load_image`, arrays as they are), and whether one image was given."""
    images, single = image_list(images)
    if not images:
        raise ValueError("give at least one image")
    return [i if isinstance(i, np.ndarray) else load_image(i) for i in images], single


def rank_each(
    images: list[Image],
    single: bool,
    scores: Callable[[Image], np.ndarray],
    labels: Sequence[str],
    top_k: int,
) -> list[dict[str, float | str]] | list[list[dict[str, float | str]]]:
    """`rank` of each image's `scores(image)` `[labels]`; the one ranking when `single`."""
    # One image per forward, as transformers' pipeline runs them: a single input shape, so the
    # forward compiles once however many images come.
    results = [rank(scores(image), labels, top_k) for image in images]
    return results[0] if single else results


def rank(scores: np.ndarray, labels: Sequence[str], top_k: int) -> list[dict[str, float | str]]:
    """The `top_k` best of `labels` by `scores` (`[labels]`), best first; ties keep label order,
    as transformers' stable sort does."""
    best = sorted(range(len(labels)), key=lambda i: -scores[i])[:top_k]
    return [{"label": labels[i], "score": float(scores[i])} for i in best]


def print_scores(images: Sequence[str], results: list[list[dict]]) -> None:
    """Each image's name, then its labels with their scores (the classify commands' output)."""
    for image, scores in zip(images, results, strict=True):
        print(image)
        for result in scores:
            print(f"  {result['score']:.4f}  {result['label']}")


@dataclasses.dataclass
class ImageClassificationPipeline:
    """Classifies images with a ViTForImageClassification and its image processor, as
    transformers' pipeline does.

    `pipe(image, top_k=5)` returns `[{"label": ..., "score": ...}, ...]`, the `top_k` best labels
    of `config.id2label`, best first; one such list per image when given a list of images. An
    image is a path, a PIL image or a uint8 array `[height, width, 3]`.

    Attributes:
      function_to_apply: "softmax", "sigmoid" or "none" on the logits (see
        `default_score_function`).
    """

    model: ViTForImageClassification
    image_processor: ViTImageProcessor
    function_to_apply: str = "softmax"

    def __post_init__(self):
        if not isinstance(self.model, ViTForImageClassification):
            raise ValueError(
                "image-classification needs a ViTForImageClassification (a checkpoint with a "
                f"classifier), got a {type(self.model).__name__}"
            )
        if self.function_to_apply not in SCORE_FUNCTIONS:
            raise ValueError(
                f"function_to_apply must be one of {list(SCORE_FUNCTIONS)}, "
                f"got {self.function_to_apply!r}"
            )

    @classmethod
    def from_model(cls, model: Any, directory: str | os.PathLike) -> ImageClassificationPipeline:
        """A loaded model with the preprocessor_config.json of its checkpoint `directory`;
        scores as transformers picks them from config.json's `problem_type` and the number of
        labels."""
        problem_type = read_config(directory).get("problem_type")
        function = default_score_function(problem_type, len(model.config.id2label))
        return cls(model, ViTImageProcessor.from_pretrained(directory), function)

    def __call__(
        self, images: Image | Sequence[Image], *, top_k: int | None = 5
    ) -> list[dict[str, float | str]] | list[list[dict[str, float | str]]]:
        """top_k: how many labels per image (at most all of them; None: all)."""
        id2label = self.model.config.id2label
        top_k = len(id2label) if top_k is None else top_k
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be at least 1 (an int; None: all labels), got {top_k!r}")
        images, single = pipeline_images(images)
        labels = [id2label[i] for i in range(len(id2label))]

        def scores(image: Image) -> np.ndarray:
            logits = _logits(self.model, jnp.asarray(self.image_processor(image)["pixel_values"]))
            return np.asarray(SCORE_FUNCTIONS[self.function_to_apply](logits[0]))

        return rank_each(images, single, scores, labels, top_k)

    # `polyformer classify`: its help and the arguments after the checkpoint.
    COMMAND_HELP = "label images with a ViT checkpoint"
    CHECKPOINT_HELP = "a ViTForImageClassification directory (with preprocessor_config.json)"

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("images", nargs="+", help="one or more image files")
        parser.add_argument("--top-k", type=int, default=5, help="labels shown per image")

    def run_command(self, args: argparse.Namespace) -> None:
        """Prints the top labels of each image with their scores."""
        print_scores(args.images, self(args.images, top_k=args.top_k))
