"""ViT's config, errors, modes, kernel swap and checkpoint checks."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file

import polyformer as pf
from polyformer import attention as A
from polyformer.models import vit
from tests.models.vit.reference import (
    forward,
    pixels,
    random_model,
)


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


def test_bad_pixel_values_are_refused(classifier):
    _, ours, _ = classifier
    with pytest.raises(ValueError, match=r"input image size \(24\*20\) does not match .*20\*20"):
        ours(jnp.zeros((1, 3, 24, 20)))
    with pytest.raises(ValueError, match=r"pixel_values must be \[batch, 3, height, width\]"):
        ours(jnp.zeros((1, 20, 20, 3)))
    with pytest.raises(ValueError, match="smaller than one patch"):
        ours(jnp.zeros((1, 3, 3, 20)), interpolate_pos_encoding=True)


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
