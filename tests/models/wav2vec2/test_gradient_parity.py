"""Wav2Vec2's gradients against transformers': the CTC objective (the family's default) and
Wav2Vec2ForCTC's loss with labels (torch's ctc_loss, the pad token as blank, the config's
reduction and zero_infinity), with respect to every parameter."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import polyformer as pf
from tests.models.gradients import assert_gradients_match, our_gradients, torch_gradients
from tests.models.wav2vec2.reference import TINY, padded_audio, random_hf_model

# SpecAugment's vector replaces masked frames in training only: no loss without it reaches it.
UNUSED = ("wav2vec2.masked_spec_embed",)


def key_bias(name: str) -> bool:
    """A key projection's bias adds q . b_k to every score of a query (padded keys masked or
    not), which softmax ignores: its gradient is zero in exact arithmetic, rounding noise in
    both frameworks."""
    return name.endswith("attention.k_proj.bias")


def padded_labels(lengths: list[int], vocab_size: int, seed: int = 0) -> np.ndarray:
    """int64 `[len(lengths), max(lengths)]` ids in 1..vocab_size-1 (0 is the blank), each row
    padded with -100 after its length."""
    rng = np.random.default_rng(seed)
    labels = np.full((len(lengths), max(lengths)), -100, np.int64)
    for row, n in enumerate(lengths):
        labels[row, :n] = rng.integers(1, vocab_size, n)
    return labels


def assert_gradient_parity(hf_model, path, input_values, attention_mask, labels, scan_layers=False):
    hf_model.save_pretrained(path)
    ours = pf.from_pretrained(path, scan_layers=scan_layers)
    batch = {"input_values": jnp.asarray(input_values), "labels": jnp.asarray(labels)}
    inputs = {"input_values": torch.as_tensor(input_values), "labels": torch.as_tensor(labels)}
    if attention_mask is not None:
        batch["attention_mask"] = jnp.asarray(attention_mask)
        inputs["attention_mask"] = torch.as_tensor(attention_mask)
    loss, got = our_gradients(ours, batch)
    want_loss, want = torch_gradients(hf_model, lambda m: m(**inputs).loss, path / "grads")
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    assert_gradients_match(got, want, zero=key_bias, unused=UNUSED)


CONFIGS = {
    # GroupNorm feature encoder, post-LN encoder (wav2vec2-base's layout); per-label mean.
    "group_mean": dict(TINY, ctc_loss_reduction="mean"),
    # LayerNorm feature encoder with conv biases, pre-LN encoder (the large models' layout);
    # the third utterance's 40 labels cannot fit its 34 frames, which zero_infinity drops.
    "layer_sum_zero_infinity": dict(
        TINY, feat_extract_norm="layer", conv_bias=True, do_stable_layer_norm=True,
        ctc_loss_reduction="sum", ctc_zero_infinity=True,
    ),
}  # fmt: skip
LABEL_LENGTHS = {"group_mean": [12, 9, 5], "layer_sum_zero_infinity": [12, 9, 40]}


@pytest.mark.parametrize("name", CONFIGS)
def test_gradients_match_transformers(name, tmp_path):
    """Three utterances of 0.1, 0.07 and 0.04 s (79, 55 and 34 frames), padded, with a mask."""
    hf_model = random_hf_model(CONFIGS[name])
    audio, mask = padded_audio([1600, 1111, 700], seed=3)
    labels = padded_labels(LABEL_LENGTHS[name], TINY["vocab_size"])
    assert_gradient_parity(hf_model, tmp_path, audio, mask, labels)
