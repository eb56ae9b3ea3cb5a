"""GPT-2's gradients against transformers': the causal LM objective (the family's default) and
GPT2LMHeadModel's loss with labels, with respect to every parameter."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import polyformer as pf
from tests.models.gpt.reference import random_hf_model
from tests.models.gradients import assert_gradients_match, our_gradients, torch_gradients


def assert_gradient_parity(hf_model, path, input_ids, weights, scan_layers=False):
    """Our causal_lm on input_ids[:, :-1] -> input_ids[:, 1:] (targets counted where `weights`
    is 1) against transformers' loss with labels (it shifts them itself; -100 uncounted)."""
    hf_model.save_pretrained(path)
    ours = pf.from_pretrained(path, scan_layers=scan_layers)
    batch = {
        "inputs": jnp.asarray(input_ids[:, :-1]),
        "targets": jnp.asarray(input_ids[:, 1:]),
        "weights": jnp.asarray(weights[:, 1:], jnp.float32),
    }
    loss, got = our_gradients(ours, batch)
    labels = torch.as_tensor(np.where(weights > 0, input_ids, -100))
    want_loss, want = torch_gradients(
        hf_model,
        lambda m: m(input_ids=torch.as_tensor(input_ids), labels=labels).loss,
        path / "grads",
    )
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    # A tied model has one embedding, transformer.wte.weight, whose gradient sums its use as the
    # input embedding and as the output projection on both sides; an untied one has lm_head too.
    assert ("lm_head.weight" in want) == (not hf_model.config.tie_word_embeddings)
    assert_gradients_match(got, want)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_gradients_match_transformers(tied, tmp_path):
    hf_model = random_hf_model(tie_word_embeddings=tied, n_inner=150)
    rng = np.random.default_rng(0)
    input_ids = rng.integers(0, hf_model.config.vocab_size, (3, 19))
    weights = (rng.uniform(size=input_ids.shape) < 0.8).astype(np.int64)
    assert_gradient_parity(hf_model, tmp_path, input_ids, weights)
