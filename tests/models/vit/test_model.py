"""ViT against transformers' ViTForImageClassification and ViTModel: same checkpoint, same
pixels, same outputs; plus config, errors, modes and the position-embedding interpolation."""

import dataclasses
import functools
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
from polyformer import attention as A
from polyformer.models import vit
from polyformer.models.vit.model import bicubic_matrix
from tests.models.vit.reference import (
    OFFICIAL,
    TINY,
    hf_outputs,
    pixels,
    random_hf_model,
    random_model,
)


@functools.partial(nnx.jit, static_argnames=("interpolate", "hidden"))
def forward(model, pixel_values, interpolate=False, hidden=False, rngs=None):
    return model(
        pixel_values, interpolate_pos_encoding=interpolate, output_hidden_states=hidden, rngs=rngs
    )


def close(got, want):
    np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """(transformers' tiny ViTForImageClassification, ours loaded from its save_pretrained)."""
    hf_model = random_hf_model()
    path = tmp_path_factory.mktemp("vit-classifier")
    hf_model.save_pretrained(path)
    return hf_model, pf.from_pretrained(path), path


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    """(transformers' tiny ViTModel with its pooler, ours loaded from its save_pretrained)."""
    hf_model = random_hf_model(transformers.ViTModel, pooler_output_size=29, pooler_act="relu")
    path = tmp_path_factory.mktemp("vit-bare")
    hf_model.save_pretrained(path)
    return hf_model, pf.from_pretrained(path), path


def test_config_reads_and_writes_config_json_fields():
    config = vit.ViTConfig.tiny(image_size=(20, 24), qkv_bias=False, hidden_act="gelu_new")
    hf = config.to_hf()
    assert hf["architectures"] == ["ViTForImageClassification"] and hf["image_size"] == [20, 24]
    assert hf["id2label"]["4"] == "class 4" and hf["label2id"]["class 4"] == 4
    assert vit.ViTConfig.from_hf({**hf, "transformers_version": "5.24.0"}) == config
    assert vit.ViTConfig.from_hf({**hf, "architectures": ["ViTModel"]}).architecture == "ViTModel"
    assert vit.ViTConfig.from_hf({"num_labels": 7}).num_labels == 7
    assert vit.ViTConfig.from_hf({}).id2label == {0: "LABEL_0", 1: "LABEL_1"}  # as transformers


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(architectures=["ViTForMaskedImageModeling"]), "names no class this port has"),
        (dict(hidden_size=40), "hidden_size=40 is not divisible by num_attention_heads=3"),
        (dict(hidden_act="gelu_newest"), "unknown activation function 'gelu_newest'"),
        (dict(patch_size=32), "larger than image_size"),
        (dict(image_size=[20, 20, 3]), "image_size must be a positive int or"),
        (dict(num_labels=3), "num_labels=3 but id2label has 5 entries"),
        (dict(label2id={"a": 0}), "label2id is not the inverse of id2label"),
        (dict(id2label={}), "needs at least one label"),
    ],
)
def test_bad_configs_are_refused(fields, message):
    hf = {**vit.ViTConfig.tiny().to_hf(), **fields}
    if "label2id" not in fields:
        hf.pop("label2id")
    with pytest.raises(ValueError, match=message):
        vit.ViTConfig.from_hf(hf)


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


def test_bad_pixel_values_are_refused(classifier):
    _, ours, _ = classifier
    with pytest.raises(ValueError, match=r"input image size \(24\*20\) does not match .*20\*20"):
        ours(jnp.zeros((1, 3, 24, 20)))
    with pytest.raises(ValueError, match=r"pixel_values must be \[batch, 3, height, width\]"):
        ours(jnp.zeros((1, 20, 20, 3)))
    with pytest.raises(ValueError, match="smaller than one patch"):
        ours(jnp.zeros((1, 3, 3, 20)), interpolate_pos_encoding=True)


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


def test_a_vit_model_without_pooler_round_trips(tmp_path):
    config = vit.ViTConfig.tiny(architectures=("ViTModel",), add_pooling_layer=False)
    ours = random_model(vit.ViTModel, config, seed=1)
    pf.save_pretrained(ours, tmp_path)
    assert not any(k.startswith("pooler") for k in load_file(tmp_path / "model.safetensors"))
    again = pf.from_pretrained(tmp_path)
    assert (
        again.config == ours.config
        and forward(again, jnp.zeros((1, 3, 20, 20))).pooler_output is None
    )


def test_a_checkpoint_that_does_not_fit_lists_every_problem(classifier, tmp_path):
    _, _, path = classifier
    tensors = load_file(path / "model.safetensors")
    tensors["vit.pooler.dense.weight"] = tensors.pop("classifier.weight")
    tensors["vit.layernorm.bias"] = np.zeros(7, np.float32)
    torch.save({k: torch.as_tensor(v) for k, v in tensors.items()}, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(pf.hub.CheckpointMismatchError) as error:
        pf.from_pretrained(tmp_path)
    assert error.value.missing == ["classifier.weight"]
    assert error.value.unexpected == ["vit.pooler.dense.weight"]
    assert error.value.wrong_shape == ["vit.layernorm.bias: checkpoint (7,), model (36,)"]


def test_the_attention_kernel_can_be_swapped_at_load(classifier):
    hf_model, dense, path = classifier
    favor = pf.from_pretrained(path, attention=A.Favor(num_features=64))
    assert all(isinstance(x.self_attn.kernel, A.Favor) for x in favor.vit.encoder.layers)
    x = jnp.asarray(pixels(2, 20))
    got, want = forward(favor, x).logits, forward(dense, x).logits
    assert got.shape == want.shape and np.all(np.isfinite(got))
    assert not np.allclose(got, want, atol=1e-6)  # a different kernel, really used


@nnx.jit
def train_logits(model, pixel_values, rngs):
    return model(pixel_values, rngs=rngs).logits


def test_dropout_runs_in_training_mode_only():
    config = vit.ViTConfig.tiny(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    model = random_model(vit.ViTForImageClassification, config)
    x = jnp.asarray(pixels(2, 20))
    eval_logits = forward(model, x).logits
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        model(x)
    first = train_logits(model, x, nnx.Rngs(dropout=1))
    np.testing.assert_array_equal(first, train_logits(model, x, nnx.Rngs(dropout=1)))
    assert not np.allclose(first, train_logits(model, x, nnx.Rngs(dropout=2)))
    assert not np.allclose(first, eval_logits)
    model.eval()
    np.testing.assert_array_equal(forward(model, x).logits, eval_logits)


def test_bfloat16_propagates_and_logits_stay_float32():
    config = vit.ViTConfig.tiny(dtype=jnp.bfloat16)
    model = random_model(vit.ViTForImageClassification, config)
    full = random_model(
        vit.ViTForImageClassification, dataclasses.replace(config, dtype=jnp.float32)
    )
    x = jnp.asarray(pixels(2, 20))
    out = forward(model, x, hidden=True)
    assert all(h.dtype == jnp.bfloat16 for h in out.hidden_states)
    assert out.logits.dtype == jnp.float32
    np.testing.assert_allclose(out.logits, forward(full, x).logits, atol=0.05)


def test_parameters_carry_logical_axes(classifier):
    state = nnx.state(classifier[1], nnx.Param)
    layer = state["vit"]["encoder"]["layers"][0]
    assert layer["mlp"]["fc1"]["kernel"].out_sharding == ("embed", "mlp")
    assert layer["self_attn"]["query"]["kernel"].out_sharding == ("embed", "heads")
    assert state["vit"]["embeddings"]["position_embedding"].out_sharding == (None, "embed")


@pytest.mark.heavy
def test_official_vit_base_patch16_224_matches_transformers(tmp_path):
    """google/vit-base-patch16-224's configuration (random weights: official ones cannot be
    downloaded here)."""
    config = {k: v for k, v in OFFICIAL.items() if k not in ("architectures", "model_type")}
    hf_model = random_hf_model(**config)
    hf_model.save_pretrained(tmp_path)
    ours = pf.from_pretrained(tmp_path)
    assert ours.config == vit.ViTConfig.vit_base_patch16_224()
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(ours, nnx.Param)))
    assert n_params == sum(p.numel() for p in hf_model.parameters()) == 86_567_656
    x = pixels(2, 224)
    close(forward(ours, jnp.asarray(x)).logits, hf_outputs(hf_model, x).logits)
