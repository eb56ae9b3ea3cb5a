"""Random-weight transformers CLIP models, the reference of the parity tests here."""

import numpy as np
import torch
import transformers

from tests.models.vit.reference import pixels, randomise

__all__ = ["OFFICIAL", "TINY", "hf_outputs", "pixels", "random_hf_model", "texts"]

# Tiny sizes. The text tower's eos_token_id is neither the legacy 2 nor the largest id, so
# pooling at the largest id (the legacy rule) would pick another position.
TINY = dict(
    text_config=dict(
        vocab_size=99, hidden_size=24, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=13, bos_token_id=97, eos_token_id=7,
        pad_token_id=1,
    ),
    vision_config=dict(
        hidden_size=36, intermediate_size=50, num_hidden_layers=2, num_attention_heads=3,
        image_size=20, patch_size=4,
    ),
    projection_dim=16,
)  # fmt: skip

# openai/clip-vit-base-patch32's config.json (the legacy text eos_token_id 2 included).
OFFICIAL = dict(
    architectures=["CLIPModel"], initializer_factor=1.0, logit_scale_init_value=2.6592,
    model_type="clip", projection_dim=512,
    text_config=dict(
        attention_dropout=0.0, bos_token_id=0, eos_token_id=2, hidden_act="quick_gelu",
        hidden_size=512, initializer_factor=1.0, initializer_range=0.02, intermediate_size=2048,
        layer_norm_eps=1e-05, max_position_embeddings=77, model_type="clip_text_model",
        num_attention_heads=8, num_hidden_layers=12, pad_token_id=1, projection_dim=512,
        vocab_size=49408,
    ),
    vision_config=dict(
        attention_dropout=0.0, hidden_act="quick_gelu", hidden_size=768, image_size=224,
        initializer_factor=1.0, initializer_range=0.02, intermediate_size=3072,
        layer_norm_eps=1e-05, model_type="clip_vision_model", num_attention_heads=12,
        num_channels=3, num_hidden_layers=12, patch_size=32, projection_dim=512,
    ),
)  # fmt: skip


def random_hf_model(text_config=None, vision_config=None, **config) -> transformers.CLIPModel:
    """transformers' CLIPModel at the TINY sizes unless overridden (per tower too), every
    parameter random."""
    torch.manual_seed(0)
    text = {**TINY["text_config"], **(text_config or {})}
    vision = {**TINY["vision_config"], **(vision_config or {})}
    config = {"projection_dim": TINY["projection_dim"], **config}
    hf_config = transformers.CLIPConfig(text_config=text, vision_config=vision, **config)
    return randomise(transformers.CLIPModel(hf_config))


def texts(end_id: int, vocab_size: int, seed: int = 0):
    """input_ids and attention_mask `[4, 9]`: the start token vocab_size - 2, tokens from
    8..vocab_size - 4, the end-of-text token `end_id`, then padding (id 1, mask 0). Row 1 has no
    padding, row 2 is start + end only, row 3 holds `end_id` twice (pooling takes the first)."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(8, vocab_size - 3, (4, 9))
    input_ids[:, 0] = vocab_size - 2
    mask = np.zeros((4, 9), np.int64)
    for row, n in enumerate((6, 9, 2, 9)):
        input_ids[row, n - 1] = end_id
        input_ids[row, n:] = 1
        mask[row, :n] = 1
    input_ids[3, 4] = end_id
    return input_ids, mask


def hf_outputs(model, input_ids, pixel_values, attention_mask=None, **kwargs):
    mask = None if attention_mask is None else torch.as_tensor(attention_mask)
    with torch.no_grad():
        return model(
            input_ids=torch.as_tensor(input_ids),
            pixel_values=torch.as_tensor(pixel_values),
            attention_mask=mask,
            **kwargs,
        )
