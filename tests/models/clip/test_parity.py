"""CLIP against transformers' CLIPModel: same checkpoint, same texts and pixels, same outputs,
under both end-of-text pooling rules, and checkpoints that round-trip between the two."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file

import polyformer as pf
from polyformer.models import clip
from tests.models.clip.reference import OFFICIAL, TINY, hf_outputs, pixels, random_hf_model, texts
from tests.models.clip.test_gradient_parity import assert_gradient_parity
from tests.models.layer_outputs import assert_layers_match
from tests.models.vit.reference import random_model, randomise

OUTPUTS = ("logits_per_image", "logits_per_text", "text_embeds", "image_embeds")


@functools.partial(nnx.jit, static_argnames=("interpolate",))
def forward(model, input_ids, pixel_values, attention_mask=None, interpolate=False):
    return model(input_ids, pixel_values, attention_mask, interpolate_pos_encoding=interpolate)


def close(got, want):
    np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=1e-4, rtol=0)


def assert_outputs_match(ours, hf_model, input_ids, pixel_values, mask=None, interpolate=False):
    want = hf_outputs(hf_model, input_ids, pixel_values, mask, interpolate_pos_encoding=interpolate)
    got = forward(ours, jnp.asarray(input_ids), jnp.asarray(pixel_values),
                  None if mask is None else jnp.asarray(mask), interpolate)  # fmt: skip
    for name in OUTPUTS:
        assert getattr(got, name).dtype == jnp.float32, name
        close(getattr(got, name), getattr(want, name))
    return got, want


def test_outputs_match_transformers_pooling_at_eos_token_id(checkpoint):
    hf_model, ours, _ = checkpoint
    vocab, eos = TINY["text_config"]["vocab_size"], TINY["text_config"]["eos_token_id"]
    input_ids, mask = texts(eos, vocab)
    # The legacy rule (largest id) would pool elsewhere: this checks which rule ran.
    assert not np.array_equal(input_ids.argmax(-1), (input_ids == eos).argmax(-1))
    got, want = assert_outputs_match(ours, hf_model, input_ids, pixels(3, 20), mask)
    assert got.logits_per_image.shape == (3, 4)
    real = mask.astype(bool)
    np.testing.assert_allclose(
        np.asarray(got.text_model_output.last_hidden_state)[real],
        want.text_model_output.last_hidden_state.numpy()[real],
        atol=1e-4,
    )
    close(got.vision_model_output.last_hidden_state, want.vision_model_output.last_hidden_state)


def test_get_features_match_transformers(checkpoint):
    """transformers 5 returns the tower's output with the projection as pooler_output."""
    hf_model, ours, _ = checkpoint
    input_ids, mask = texts(TINY["text_config"]["eos_token_id"], TINY["text_config"]["vocab_size"])
    x = pixels(2, 20, seed=3)
    with torch.no_grad():
        want_text = hf_model.get_text_features(
            input_ids=torch.as_tensor(input_ids), attention_mask=torch.as_tensor(mask)
        )
        want_image = hf_model.get_image_features(pixel_values=torch.as_tensor(x))
    text = nnx.jit(lambda m, i, a: m.get_text_features(i, a))(ours, input_ids, mask)
    image = nnx.jit(lambda m, x: m.get_image_features(x))(ours, x)
    close(text.pooler_output, want_text.pooler_output)
    close(image.pooler_output, want_image.pooler_output)
    close(image.last_hidden_state, want_image.last_hidden_state)


def test_outputs_match_transformers_with_the_legacy_eos_token_id(tmp_path):
    """eos_token_id 2, as openai/clip-vit-base-patch32's config.json says: pooling at the
    largest token id, which is where the end of text is in CLIP's vocabulary."""
    hf_model = random_hf_model(text_config=dict(eos_token_id=2, bos_token_id=0))
    hf_model.save_pretrained(tmp_path)
    ours = pf.from_pretrained(tmp_path)
    assert ours.config.text_config.legacy_pooling
    vocab = TINY["text_config"]["vocab_size"]
    input_ids, mask = texts(vocab - 1, vocab, seed=1)
    assert not np.array_equal(input_ids.argmax(-1), (input_ids == 2).argmax(-1))
    assert_outputs_match(ours, hf_model, input_ids, pixels(2, 20), mask)


def test_interpolated_position_embeddings_match_transformers(checkpoint):
    hf_model, ours, _ = checkpoint
    input_ids, _ = texts(TINY["text_config"]["eos_token_id"], TINY["text_config"]["vocab_size"])
    assert_outputs_match(ours, hf_model, input_ids, pixels(2, 28, 24, seed=2), interpolate=True)


def test_transformers_to_ours_to_transformers_is_identity(checkpoint, tmp_path):
    _, ours, path = checkpoint
    pf.save_pretrained(ours, tmp_path)
    want, got = load_file(path / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert got.keys() == want.keys() and got["logit_scale"].shape == ()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_ours_saved_loads_in_transformers_with_the_same_outputs(tmp_path):
    ours = random_model(clip.CLIPModel, clip.CLIPConfig.tiny(), seed=5)
    pf.save_pretrained(ours, tmp_path)
    hf_model = transformers.CLIPModel.from_pretrained(tmp_path).eval()
    assert hf_model.logit_scale.item() == pytest.approx(float(ours.logit_scale[...]))
    input_ids, mask = texts(TINY["text_config"]["eos_token_id"], TINY["text_config"]["vocab_size"])
    assert_outputs_match(ours, hf_model, input_ids, pixels(2, 20), mask)


@pytest.mark.heavy
@pytest.mark.usefixtures("optimized")
def test_official_clip_vit_base_patch32_matches_transformers(tmp_path):
    """openai/clip-vit-base-patch32's configuration (random weights: official ones cannot be
    downloaded here), legacy pooling included, one checkpoint: gradients with scan_layers on
    two caption-image pairs, the smallest batch whose contrastive loss is not identically zero
    (saving the checkpoint), then the unscanned model's outputs."""
    torch.manual_seed(0)
    hf_model = randomise(transformers.CLIPModel(transformers.CLIPConfig(**OFFICIAL)))
    input_ids, mask = texts(49407, 49408)
    assert_gradient_parity(
        hf_model, tmp_path, input_ids[:2], mask[:2], pixels(2, 224), scan_layers=True
    )
    ours = pf.from_pretrained(tmp_path)
    assert ours.config == clip.CLIPConfig.clip_vit_base_patch32()
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(ours, nnx.Param)))
    assert n_params == sum(p.numel() for p in hf_model.parameters()) == 151_277_313
    assert_outputs_match(ours, hf_model, input_ids[:3], pixels(2, 224), mask[:3])


def test_both_towers_attentions_and_hidden_states_match_eager_transformers(checkpoint):
    _, ours, path = checkpoint
    hf_model = transformers.CLIPModel.from_pretrained(path, attn_implementation="eager")
    input_ids, mask = texts(TINY["text_config"]["eos_token_id"], TINY["text_config"]["vocab_size"])
    x = pixels(3, 20, seed=4)
    flags = dict(output_attentions=True, output_hidden_states=True)
    want = hf_outputs(hf_model, input_ids, x, mask, **flags)
    got = nnx.jit(lambda m, i, x, a: m(i, x, a, **flags))(ours, input_ids, x, mask)
    for tower in ("text", "vision"):
        layers = TINY[f"{tower}_config"]["num_hidden_layers"]
        g, w = getattr(got, f"{tower}_model_output"), getattr(want, f"{tower}_model_output")
        assert_layers_match(g.attentions, w.attentions, layers, 1e-5)
        assert_layers_match(g.hidden_states, w.hidden_states, layers + 1, 1e-5)
    assert got.text_model_output.attentions[0].shape == (4, 2, 9, 9)
