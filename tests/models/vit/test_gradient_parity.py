"""ViT's gradients against transformers': the image classification objective (the family's
default) and ViTForImageClassification's loss with labels, with respect to every parameter."""

import jax.numpy as jnp
import numpy as np
import torch

import polyformer as pf
from tests.models.gradients import assert_gradients_match, our_gradients, torch_gradients
from tests.models.vit.reference import pixels, random_hf_model


def key_bias(name: str) -> bool:
    """A key projection's bias adds q . b_k to every score of a query, which softmax ignores: its
    gradient is zero in exact arithmetic, rounding noise in both frameworks."""
    return name.endswith("attention.attention.key.bias")


def assert_gradient_parity(hf_model, path, pixel_values, labels, scan_layers=False):
    hf_model.save_pretrained(path)
    ours = pf.from_pretrained(path, scan_layers=scan_layers)
    batch = {"pixel_values": jnp.asarray(pixel_values), "labels": jnp.asarray(labels)}
    loss, got = our_gradients(ours, batch)
    want_loss, want = torch_gradients(
        hf_model,
        lambda m: m(torch.as_tensor(pixel_values), labels=torch.as_tensor(labels)).loss,
        path / "grads",
    )
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    assert_gradients_match(got, want, zero=key_bias)


def test_gradients_match_transformers(tmp_path):
    hf_model = random_hf_model()
    assert_gradient_parity(hf_model, tmp_path, pixels(3, 20), np.array([4, 0, 2]))
