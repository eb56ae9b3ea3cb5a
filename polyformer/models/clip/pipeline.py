"""The "zero-shot-image-classification" pipeline: images and label texts -> CLIP's probability of
each label."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from polyformer.models.clip.model import CLIPModel
from polyformer.models.clip.processing import CLIPImageProcessor
from polyformer.models.clip.tokenizer import CLIPTokenizer
from polyformer.models.inputs import check_vocabulary
from polyformer.models.vit.pipeline import pipeline_images, print_scores, rank_each
from polyformer.models.vit.processing import Image

HYPOTHESIS_TEMPLATE = "This is a photo of {}."  # transformers' default


@nnx.jit
def _logits_per_image(
    model: CLIPModel, input_ids: jax.Array, pixel_values: jax.Array, attention_mask: jax.Array
) -> jax.Array:
    return model(input_ids, pixel_values, attention_mask).logits_per_image


@dataclasses.dataclass
class ZeroShotImageClassificationPipeline:
    """Scores candidate labels for images with CLIP, as transformers' pipeline does.

    `pipe(image, candidate_labels=["cat", "dog"])` returns `[{"label": ..., "score": ...}, ...]`
    for every label, best first: the softmax over the labels of CLIP's `logits_per_image`
    between the image and each `hypothesis_template.format(label)`. One such list per image when
    given a list of images. Pass `hypothesis_template="{}"` for labels that are whole sentences
    already ("a photo of a cat").
    """

    model: CLIPModel
    image_processor: CLIPImageProcessor
    tokenizer: CLIPTokenizer

    def __post_init__(self):
        if not isinstance(self.model, CLIPModel):
            raise ValueError(
                "zero-shot-image-classification needs a CLIPModel, got a "
                f"{type(self.model).__name__}"
            )

    @classmethod
    def from_model(
        cls, model: CLIPModel, directory: str | os.PathLike
    ) -> ZeroShotImageClassificationPipeline:
        """A loaded model with the preprocessor_config.json and tokenizer files of its checkpoint
        `directory`."""
        tokenizer = CLIPTokenizer.from_pretrained(directory)
        check_vocabulary(len(tokenizer), model.config.text_config.vocab_size, directory)
        return cls(model, CLIPImageProcessor.from_pretrained(directory), tokenizer)

    def __call__(
        self,
        images: Image | Sequence[Image],
        candidate_labels: Sequence[str],
        *,
        hypothesis_template: str = HYPOTHESIS_TEMPLATE,
    ) -> list[dict[str, float | str]] | list[list[dict[str, float | str]]]:
        if (
            isinstance(candidate_labels, str)
            or not isinstance(candidate_labels, Sequence)
            or not candidate_labels
            or not all(isinstance(label, str) for label in candidate_labels)
        ):
            raise ValueError(
                "candidate_labels is a list of label strings (at least one), got "
                f"{candidate_labels!r}"
            )
        if not isinstance(hypothesis_template, str) or hypothesis_template.count("{}") != 1:
            raise ValueError(
                "hypothesis_template must hold one {} where the label goes, "
                f"got {hypothesis_template!r}"
            )
        labels = list(candidate_labels)
        images, single = pipeline_images(images)
        # Padded to the model's full context (77), as OpenAI's CLIP pads: padding is masked and
        # comes after the pooled end-of-text, so the result is transformers' (which pads to the
        # longest), and the forward compiles once per number of labels, not per text length.
        try:
            hypotheses = [hypothesis_template.format(label) for label in labels]
        except (IndexError, KeyError, ValueError) as e:
            raise ValueError(
                f"hypothesis_template {hypothesis_template!r} must hold one {{}} and no other "
                "braces (write {{ and }} for literal ones)"
            ) from e
        context = self.model.config.text_config.max_position_embeddings
        text = self.tokenizer(hypotheses, padding="max_length", max_length=context)
        input_ids = jnp.asarray(text["input_ids"])
        attention_mask = jnp.asarray(text["attention_mask"])

        def scores(image: Image) -> np.ndarray:
            pixel_values = jnp.asarray(self.image_processor(image)["pixel_values"])
            logits = _logits_per_image(self.model, input_ids, pixel_values, attention_mask)[0]
            return np.asarray(jax.nn.softmax(logits))

        return rank_each(images, single, scores, labels, len(labels))

    # `polyformer zero-shot`: its help and the arguments after the checkpoint.
    COMMAND_HELP = "score label texts for images with a CLIP checkpoint"
    CHECKPOINT_HELP = "a CLIP directory (with preprocessor_config.json and tokenizer files)"

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("images", nargs="+", help="one or more image files")
        parser.add_argument(
            "--labels",
            required=True,
            help='comma-separated, e.g. "a photo of a cat,a photo of a dog"',
        )
        parser.add_argument(
            "--template",
            help="the sentence each label is put into, {} marking where (default: the "
            'pipeline\'s, "This is a photo of {}.")',
        )

    def run_command(self, args: argparse.Namespace) -> None:
        """Prints each image's labels with their scores."""
        labels = [label.strip() for label in args.labels.split(",")]
        if not all(labels):
            raise ValueError(f"--labels is a comma-separated list of labels, got {args.labels!r}")
        template = {} if args.template is None else {"hypothesis_template": args.template}
        print_scores(args.images, self(args.images, candidate_labels=labels, **template))
