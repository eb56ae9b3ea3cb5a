import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.models.clip.modeling_clip import image_text_contrastive_loss as clip_loss

from polyformer.training.objectives import clip as oc


def test_contrastive_loss_and_gradient_match_hf_clip_loss():
    logits = np.random.default_rng(1).normal(size=(7, 7)).astype(np.float32) * 5
    loss, grad = jax.value_and_grad(oc.contrastive_loss)(jnp.asarray(logits))
    torch_logits = torch.from_numpy(logits).requires_grad_()
    expected = clip_loss(torch_logits)
    expected.backward()
    np.testing.assert_allclose(loss, expected.item(), rtol=1e-6)
    np.testing.assert_allclose(grad, torch_logits.grad.numpy(), atol=1e-7)
    with pytest.raises(ValueError, match="square"):
        oc.contrastive_loss(jnp.zeros((3, 4)))


def test_temperature_is_clamped_at_100():
    rng = np.random.default_rng(2)
    text, image = (rng.normal(size=(4, 8)).astype(np.float32) for _ in range(2))
    text /= np.linalg.norm(text, axis=-1, keepdims=True)
    image /= np.linalg.norm(image, axis=-1, keepdims=True)
    cosine = text @ image.T
    # Below the cap: HF's logits_per_text, exp(logit_scale) * cosine similarities.
    np.testing.assert_allclose(oc.clip_logits(text, image, jnp.float32(2.6592)),
                               np.exp(2.6592) * cosine, rtol=1e-5)  # fmt: skip
    np.testing.assert_allclose(oc.clip_logits(text, image, jnp.float32(5.0)), 100 * cosine,
                               rtol=1e-5)  # fmt: skip

    def loss_at(scale):
        return oc.contrastive_loss(oc.clip_logits(text, image, scale))

    assert jax.grad(loss_at)(jnp.float32(5.0)) == 0.0
    assert jax.grad(loss_at)(jnp.float32(2.0)) != 0.0
