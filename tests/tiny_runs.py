"""A tiny run config of every model family, with random data of its objective's shapes: what the
compile and autodiff tests build from."""

from polyformer.models.clip import CLIPConfig
from polyformer.models.gpt import GPT2Config
from polyformer.models.tapas import TapasConfig
from polyformer.models.vit import ViTConfig
from polyformer.models.wav2vec2 import Wav2Vec2Config
from polyformer.training.config import RunConfig
from polyformer.training.data.synthetic import ArraySpec, SyntheticData, token_windows

LENGTH = 16  # tokens of the text models


def _data(*arrays: ArraySpec, tokens: int) -> SyntheticData:
    return SyntheticData(arrays, tokens, train_examples=8, eval_examples=8)


def _runs() -> dict[str, tuple[object, str, SyntheticData]]:
    gpt, vit, clip = GPT2Config.tiny(), ViTConfig.tiny(), CLIPConfig.tiny()
    tapas, wav2vec2 = TapasConfig.tiny(), Wav2Vec2Config.tiny()
    image = (vit.num_channels, vit.image_size, vit.image_size)
    clip_image = (3, clip.vision_config.image_size, clip.vision_config.image_size)
    text = clip.text_config.max_position_embeddings
    return {
        "gpt2": (gpt, "causal_lm", token_windows(LENGTH, gpt.vocab_size, train_examples=8)),
        "vit": (
            vit,
            "image_classification",
            _data(
                ArraySpec("pixel_values", image, "float32"),
                ArraySpec("labels", (), "int32", vit.num_labels),
                tokens=(vit.image_size // vit.patch_size) ** 2 + 1,
            ),
        ),
        "clip": (
            clip,
            "clip_contrastive",
            _data(
                ArraySpec("input_ids", (text,), "int32", clip.text_config.vocab_size),
                ArraySpec("attention_mask", (text,), "int32", 2, 1),
                ArraySpec("pixel_values", clip_image, "float32"),
                tokens=text,
            ),
        ),
        "wav2vec2": (
            wav2vec2,
            "ctc",
            _data(
                ArraySpec("input_values", (400,), "float32"),
                ArraySpec("labels", (5,), "int32", wav2vec2.vocab_size, 1),
                tokens=400,
            ),
        ),
        "tapas": (
            tapas,
            "tapas",
            _data(
                ArraySpec("input_ids", (LENGTH,), "int32", tapas.vocab_size),
                ArraySpec("attention_mask", (LENGTH,), "int32", 2, 1),
                ArraySpec("token_type_ids", (LENGTH, 7), "int32", 2),
                ArraySpec("labels", (LENGTH,), "int32", 2),
                ArraySpec("float_answer", (), "float32"),
                ArraySpec("numeric_values", (LENGTH,), "float32"),
                ArraySpec("numeric_values_scale", (LENGTH,), "float32"),
                tokens=LENGTH,
            ),
        ),
    }


FAMILIES = tuple(_runs())


def run_config(family: str, **fields) -> RunConfig:
    """The tiny run of `family`: its tiny model, objective and random data."""
    model, objective, data = _runs()[family]
    defaults = dict(model=model, objective=objective, data=data, batch_size=8, steps=10)
    return RunConfig(**{**defaults, **fields})
