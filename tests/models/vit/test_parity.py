"""ViT against transformers' ViTForImageClassification and ViTModel: same checkpoint, same
pixels, same outputs, and checkpoints that round-trip between the two."""

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
from polyformer.models import vit
from polyformer.models.vit.model import bicubic_matrix
from tests.models.layer_outputs import assert_layers_match
from tests.models.vit.reference import (
    OFFICIAL,
    TINY,
    close,
    forward,
    hf_outputs,
    pixels,
    random_hf_model,
    random_model,
)
from tests.models.vit.test_gradient_parity import assert_gradient_parity


def test_classifier_logits_and_hidden_states_match_transformers(classifier):
    hf_model, ours, _ = classifier
    x = pixels(3, 20)
    want = hf_outputs(hf_model, x, output_hidden_states=True)
    got = forward(ours, jnp.asarray(x), hidden=True)
    assert got.logits.dtype == jnp.float32 and got.logits.shape == (3, 5)
    close(got.logits, want.logits)
    assert len(got.hidden_states) == len(want.hidden_states) == TINY["num_hidden_layers"] + 1
    for g, w in zip(got.hidden_states, want.hidden_states, strict=True):
        close(g, w)


@pytest.mark.parametrize("size", [(28, 36), (12, 12), (16, 24)])
def test_interpolated_position_embeddings_match_transformers(classifier, size):
    """Larger, smaller, and the same number of patches on another grid (4 x 6 for 5 x 5)."""
    hf_model, ours, _ = classifier
    x = pixels(2, *size, seed=1)
    want = hf_outputs(hf_model, x, interpolate_pos_encoding=True)
    close(forward(ours, jnp.asarray(x), interpolate=True).logits, want.logits)


@pytest.mark.parametrize("sizes", [(5, 8), (5, 3), (7, 7), (1, 4), (4, 1)])
def test_bicubic_matrix_resizes_as_torch_interpolate(sizes):
    n, m = sizes
    grid = np.random.default_rng(0).normal(size=(n, n)).astype(np.float32)
    want = torch.nn.functional.interpolate(
        torch.as_tensor(grid)[None, None], size=(m, m), mode="bicubic", align_corners=False
    )[0, 0].numpy()
    got = bicubic_matrix(n, m) @ grid @ bicubic_matrix(n, m).T
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_vit_model_with_pooler_matches_transformers(bare):
    hf_model, ours, _ = bare
    assert type(ours) is vit.ViTModel and ours.config.pooler_output_size == 29
    x = pixels(2, 20, seed=2)
    want = hf_outputs(hf_model, x)
    got = forward(ours, jnp.asarray(x))
    close(got.last_hidden_state, want.last_hidden_state)
    close(got.pooler_output, want.pooler_output)


def test_qkv_bias_false_matches_transformers(tmp_path):
    hf_model = random_hf_model(qkv_bias=False, hidden_act="gelu_new", layer_norm_eps=1e-6)
    hf_model.save_pretrained(tmp_path)
    ours = pf.from_pretrained(tmp_path)
    assert "bias" not in nnx.state(ours.vit.encoder.layers[0].self_attn.query, nnx.Param)
    x = pixels(2, 20)
    close(forward(ours, jnp.asarray(x)).logits, hf_outputs(hf_model, x).logits)


@pytest.mark.parametrize("name", ["classifier", "bare"])
def test_transformers_to_ours_to_transformers_is_identity(name, request, tmp_path):
    _, ours, path = request.getfixturevalue(name)
    pf.save_pretrained(ours, tmp_path)
    want, got = load_file(path / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    config = json.loads((tmp_path / "config.json").read_text())
    hf_config = json.loads((path / "config.json").read_text())
    for key in ("architectures", "id2label", "label2id", "pooler_output_size", "pooler_act"):
        assert config[key] == hf_config[key], key


def test_ours_saved_loads_in_transformers_with_the_same_outputs(tmp_path):
    config = vit.ViTConfig.tiny(image_size=(16, 24), patch_size=(4, 3), hidden_act="quick_gelu")
    ours = random_model(vit.ViTForImageClassification, config, seed=3)
    pf.save_pretrained(ours, tmp_path)
    hf_model = transformers.ViTForImageClassification.from_pretrained(tmp_path).eval()
    assert hf_model.config.id2label == dict(config.id2label)
    x = pixels(2, 16, 24)
    close(forward(ours, jnp.asarray(x)).logits, hf_outputs(hf_model, x).logits)


@pytest.mark.heavy
@pytest.mark.usefixtures("optimized")
def test_official_vit_base_patch16_224_matches_transformers(tmp_path):
    """google/vit-base-patch16-224's configuration (random weights: official ones cannot be
    downloaded here), one checkpoint: gradients with scan_layers on one image (saving the
    checkpoint), then the unscanned model's logits on two."""
    config = {k: v for k, v in OFFICIAL.items() if k not in ("architectures", "model_type")}
    hf_model = random_hf_model(**config)
    assert_gradient_parity(hf_model, tmp_path, pixels(1, 224), np.array([417]), scan_layers=True)
    ours = pf.from_pretrained(tmp_path)
    assert ours.config == vit.ViTConfig.vit_base_patch16_224()
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(ours, nnx.Param)))
    assert n_params == sum(p.numel() for p in hf_model.parameters()) == 86_567_656
    x = pixels(2, 224)
    close(forward(ours, jnp.asarray(x)).logits, hf_outputs(hf_model, x).logits)


@pytest.mark.parametrize("fixture", ["classifier", "bare"])
def test_attentions_and_hidden_states_match_eager_transformers(fixture, request):
    hf_model, ours, path = request.getfixturevalue(fixture)
    hf_model = type(hf_model).from_pretrained(path, attn_implementation="eager")
    x = pixels(2, 20, seed=3)
    want = hf_outputs(hf_model, x, output_attentions=True, output_hidden_states=True)
    run = nnx.jit(lambda m, x: m(x, output_attentions=True, output_hidden_states=True))
    got = run(ours, jnp.asarray(x))
    layers = TINY["num_hidden_layers"]
    assert got.attentions[0].shape == (2, TINY["num_attention_heads"], 26, 26)
    assert_layers_match(got.attentions, want.attentions, layers, 1e-5)
    assert_layers_match(got.hidden_states, want.hidden_states, layers + 1, 1e-5)
