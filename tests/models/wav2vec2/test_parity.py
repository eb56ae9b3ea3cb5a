"""Wav2Vec2ForCTC / Wav2Vec2Model against transformers: logits, hidden states, padded batches,
SpecAugment spans and checkpoints both ways."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file

import polyformer as pf
from polyformer.models import wav2vec2
from polyformer.models.wav2vec2 import Wav2Vec2Config
from tests.models.layer_outputs import assert_layers_match
from tests.models.wav2vec2.reference import (
    BASE_960H,
    LENGTHS,
    VARIANTS,
    assert_close,
    hf_forward,
    logits,
    padded_audio,
    random_hf_model,
    real_frames,
)
from tests.models.wav2vec2.test_gradient_parity import assert_gradient_parity, padded_labels


def test_padded_batch_logits_match_transformers(checkpoint):
    variant, hf_model, _, ours = checkpoint
    audio, mask = padded_audio(LENGTHS)
    # No mask: how base-960h is used; the zeros are audio to both models, every frame counts.
    assert_close(logits(ours, audio), hf_forward(hf_model, audio).logits)
    # The mask path, how lv60 is used: zeroed padded frames, key-padding mask in attention.
    real = real_frames(ours.config, mask)
    assert real.sum(1).tolist() == [79, 55]
    assert_close(logits(ours, audio, mask), hf_forward(hf_model, audio, mask).logits, real)
    # With LayerNorm convs a row's real frames do not depend on the padding after it; the
    # GroupNorm conv normalises over all samples, the padding included, in HF as here.
    alone = logits(ours, audio[1:, : LENGTHS[1]], mask[1:, : LENGTHS[1]])
    padded = logits(ours, audio, mask)[1:, :55]
    assert np.allclose(padded, alone, atol=1e-5) == (variant == "layer")


def test_hidden_states_match_transformers(checkpoint):
    _, hf_model, _, ours = checkpoint
    audio, mask = padded_audio(LENGTHS, seed=1)
    real = real_frames(ours.config, mask)
    out = nnx.jit(lambda m, x, a: m(x, a, output_hidden_states=True))(ours, audio, mask)
    ref = hf_forward(hf_model, audio, mask, output_hidden_states=True)
    assert len(out.hidden_states) == len(ref.hidden_states) == ours.config.num_hidden_layers + 1
    for got, want in zip(out.hidden_states, ref.hidden_states, strict=True):
        assert_close(got, want.numpy(), real)


def test_base_model_outputs_match_transformers(tmp_path):
    """Wav2Vec2Model (architectures in config.json picks it): last_hidden_state and
    extract_features, and its checkpoint (no `wav2vec2.` prefix) written back as it was."""
    hf_model = random_hf_model(VARIANTS["layer"], head="Wav2Vec2Model")
    hf_model.save_pretrained(tmp_path / "hf")
    ours = pf.from_pretrained(tmp_path / "hf")
    assert isinstance(ours, wav2vec2.Wav2Vec2Model)
    audio, mask = padded_audio(LENGTHS, seed=2)
    real = real_frames(ours.config, mask)
    out = nnx.jit(lambda m, x, a: m(x, a))(ours, audio, mask)
    ref = hf_forward(hf_model, audio, mask)
    assert_close(out.last_hidden_state, ref.last_hidden_state.numpy(), real)
    assert_close(out.extract_features, ref.extract_features.numpy(), real)
    pf.save_pretrained(ours, tmp_path / "ours")
    want = load_file(tmp_path / "hf" / "model.safetensors")
    got = load_file(tmp_path / "ours" / "model.safetensors")
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_spec_augment_time_mask_matches_transformers(checkpoint):
    """mask_time_indices replaces frames by masked_spec_embed, as HF does when it is given."""
    _, hf_model, _, ours = checkpoint
    audio, _ = padded_audio([1600, 1600], seed=3)
    indices = np.zeros((2, 79), bool)
    indices[0, 10:20] = indices[1, 40:45] = True
    got = nnx.jit(lambda m, x, i: m(x, mask_time_indices=i).logits)(ours, audio, indices)
    want = hf_forward(hf_model, audio, mask_time_indices=torch.as_tensor(indices)).logits
    assert_close(got, want.numpy())
    assert not np.allclose(got, logits(ours, audio), atol=1e-3)


def test_transformers_to_ours_to_transformers_is_identity(checkpoint, tmp_path):
    _, _, path, ours = checkpoint
    pf.save_pretrained(ours, tmp_path)
    want = load_file(path / "model.safetensors")
    got = load_file(tmp_path / "model.safetensors")
    assert got.keys() == want.keys()  # parametrizations.weight.original0/1, as 5.x writes
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert Wav2Vec2Config.from_hf(json.loads((tmp_path / "config.json").read_text())) == (
        ours.config
    )


def test_ours_saved_loads_in_transformers_without_missing_keys(checkpoint, tmp_path):
    _, _, _, ours = checkpoint
    pf.save_pretrained(ours, tmp_path)
    hf_model, info = transformers.Wav2Vec2ForCTC.from_pretrained(tmp_path, output_loading_info=True)
    assert all(not v for v in info.values()), info
    audio, mask = padded_audio(LENGTHS)
    want = hf_forward(hf_model.eval(), audio, mask).logits.numpy()
    assert_close(logits(ours, audio, mask), want, real_frames(ours.config, mask))


def test_spec_augment_spans_are_drawn_as_transformers_draws_them():
    """Masked share, span shape and row lengths against HF's _compute_mask_indices."""
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

    lengths, size, opts = np.array([120, 60]), 120, dict(prob=0.3, span=7, min_masks=2)
    draw = jax.jit(
        jax.vmap(lambda key: wav2vec2.spec_augment_mask(key, jnp.asarray(lengths), size, **opts))
    )
    ours = np.asarray(draw(jax.random.split(jax.random.key(0), 400)))
    np.random.seed(0)  # noqa: NPY002 (HF draws from numpy's global generator)
    attention = np.arange(size)[None] < lengths[:, None]
    theirs = np.stack([
        _compute_mask_indices((2, size), 0.3, 7, torch.as_tensor(attention), min_masks=2)
        for _ in range(400)
    ])  # fmt: skip
    assert not ours[:, 1, 60:].any()  # nothing past a row's real frames
    for row in range(2):
        np.testing.assert_allclose(ours[:, row].mean(), theirs[:, row].mean(), atol=0.02)
    # Every masked run is a union of whole spans: no run shorter than the span length.
    runs = np.diff(np.pad(ours.astype(int), ((0, 0), (0, 0), (1, 1))), axis=-1)
    starts, ends = np.nonzero(runs == 1), np.nonzero(runs == -1)
    assert (ends[2] - starts[2]).min() >= 7


@pytest.mark.heavy
@pytest.mark.usefixtures("optimized")
def test_base_960h_configuration_matches_transformers(tmp_path):
    """facebook/wav2vec2-base-960h's configuration (random weights), one checkpoint. Gradients
    with scan_layers (saving the checkpoint): one second of audio without a mask (as its feature
    extractor, return_attention_mask=False, prepares batches), 20 labels over its 49 frames.
    Then the unscanned model's logits on two utterances (1.0 s and 0.7 s) in one padded batch,
    without a mask and with one. The lv60 models' layout (layer-normed convolutions, pre-LN
    encoder) is the "layer" variant above."""
    hf_model = random_hf_model(BASE_960H)
    one_second, _ = padded_audio([16000], seed=6)
    labels = padded_labels([20], BASE_960H["vocab_size"])
    assert_gradient_parity(hf_model, tmp_path, one_second, None, labels, scan_layers=True)
    ours = pf.from_pretrained(tmp_path)
    assert ours.config == Wav2Vec2Config.from_hf(BASE_960H)
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(ours, nnx.Param)))
    assert n_params == sum(p.numel() for p in hf_model.parameters())
    audio, mask = padded_audio([16000, 11200], seed=6)
    real = real_frames(ours.config, mask)
    assert real.sum(1).tolist() == [49, 34]
    assert_close(logits(ours, audio, mask), hf_forward(hf_model, audio, mask).logits, real)
    assert_close(logits(ours, audio), hf_forward(hf_model, audio).logits)


def test_attentions_and_hidden_states_match_eager_transformers_with_padding(checkpoint):
    _, hf_model, path, ours = checkpoint
    hf_model = type(hf_model).from_pretrained(path, attn_implementation="eager").eval()
    audio, mask = padded_audio(LENGTHS, seed=2)
    flags = dict(output_attentions=True, output_hidden_states=True)
    got = nnx.jit(lambda m, x, a: m(x, a, **flags))(ours, audio, mask)
    want = hf_forward(hf_model, audio, mask, **flags)
    layers = ours.config.num_hidden_layers
    assert got.attentions[0].shape == (2, 3, 79, 79)
    # Padded frames attend to the real ones in both; no padded key gets any weight.
    assert not np.asarray(got.attentions[1])[1, :, :, 55:].any()
    assert_layers_match(got.attentions, want.attentions, layers, 1e-5)
    real = real_frames(ours.config, mask)
    assert_layers_match(got.hidden_states, want.hidden_states, layers + 1, 1e-5, real)
