"""CLIP's gradients against transformers': the contrastive objective (the family's default) and
CLIPModel's loss (return_loss=True), with respect to every parameter of both towers, the
projections and the temperature."""

import math

import jax.numpy as jnp
import numpy as np
import torch

import polyformer as pf
from polyformer.training.objectives.clip import MAX_LOGIT_SCALE
from tests.models.clip.reference import pixels, random_hf_model, texts
from tests.models.gradients import assert_gradients_match, our_gradients, torch_gradients


def key_bias(name: str) -> bool:
    """A key projection's bias adds q . b_k to every score of a query (masked or not), which
    softmax ignores: its gradient is zero in exact arithmetic, rounding noise in both
    frameworks."""
    return name.endswith("self_attn.k_proj.bias")


def assert_gradient_parity(
    hf_model, path, input_ids, attention_mask, pixel_values, scan_layers=False
):
    # Our objective clamps the temperature at 100 and transformers' loss does not: below the
    # clamp the two are the same function.
    assert hf_model.logit_scale.item() < math.log(MAX_LOGIT_SCALE)
    hf_model.save_pretrained(path)
    ours = pf.from_pretrained(path, scan_layers=scan_layers)
    batch = {
        "input_ids": jnp.asarray(input_ids),
        "attention_mask": jnp.asarray(attention_mask),
        "pixel_values": jnp.asarray(pixel_values),
    }
    loss, got = our_gradients(ours, batch)
    inputs = {k: torch.as_tensor(v) for k, v in batch.items()}
    want_loss, want = torch_gradients(
        hf_model, lambda m: m(**inputs, return_loss=True).loss, path / "grads"
    )
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    assert_gradients_match(got, want, zero=key_bias)


def test_gradients_match_transformers(tmp_path):
    """Four captions, padded to different lengths (one holding the end token twice), and four
    images."""
    hf_model = random_hf_model()
    input_ids, mask = texts(hf_model.config.text_config.eos_token_id, 99)
    assert_gradient_parity(hf_model, tmp_path, input_ids, mask, pixels(4, 20))
