"""The conversion machinery every family's table uses: entry builders, strict load, save,
load_into."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from polyformer.models import convert
from polyformer.models.convert import CheckpointMismatchError, Table


def round_trip(entries, tensors):
    """HF tensors -> ours (shapes taken from to_ours) -> HF tensors again."""
    table = Table(tuple(entries))
    ours = {}
    for entry in entries:
        for path, value in zip(
            entry.ours, entry.to_ours(jnp.asarray(tensors[entry.hf])), strict=True
        ):
            ours[path] = value
    shapes = {path: jax.ShapeDtypeStruct(v.shape, v.dtype) for path, v in ours.items()}
    loaded = convert.load(table, tensors, shapes, "test")
    return loaded, convert.save(table, loaded)


def test_linear_transposes_torchs_weight_and_keeps_the_bias():
    layer = torch.nn.Linear(3, 5)
    tensors = {k: jnp.asarray(v.detach().numpy()) for k, v in layer.state_dict().items()}
    hf = {f"fc.{k}": v for k, v in tensors.items()}
    ours, back = round_trip(convert.linear("fc", ("fc",)), hf)
    x = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
    want = layer(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(x @ ours[("fc", "kernel")] + ours[("fc", "bias")], want, atol=1e-6)
    assert all(np.array_equal(back[k], hf[k]) for k in hf)
    assert [e.hf for e in convert.linear("fc", ("fc",), bias=False)] == ["fc.weight"]
    [stored] = convert.linear("c", ("c",), bias=False, transposed=False)
    assert stored.to_ours(jnp.ones((3, 5)))[0].shape == (3, 5)  # GPT-2's Conv1D: [in, out]


@pytest.mark.parametrize("dims", [1, 2])
def test_conv_matches_torch_for_1d_and_2d(dims):
    torch_conv = (torch.nn.Conv1d if dims == 1 else torch.nn.Conv2d)(3, 4, 2, stride=2)
    hf = {f"c.{k}": jnp.asarray(v.detach().numpy()) for k, v in torch_conv.state_dict().items()}
    ours, back = round_trip(convert.conv("c", ("c",)), hf)
    ours_conv = nnx.Conv(3, 4, (2,) * dims, strides=2, padding="VALID", rngs=nnx.Rngs(0))
    ours_conv.kernel.set_value(ours[("c", "kernel")])
    ours_conv.bias.set_value(ours[("c", "bias")])
    x = np.random.default_rng(0).normal(size=(2, 3, *(6,) * dims)).astype(np.float32)
    want = torch_conv(torch.from_numpy(x)).detach().numpy()
    got = np.moveaxis(np.asarray(ours_conv(jnp.asarray(np.moveaxis(x, 1, -1)))), -1, 1)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert all(np.array_equal(back[k], hf[k]) for k in hf)


def test_layer_norm_and_embedding_name_nnxs_parameters():
    assert [(e.hf, e.ours) for e in convert.layer_norm("ln", ("a", 0))] == [
        ("ln.weight", (("a", 0, "scale"),)),
        ("ln.bias", (("a", 0, "bias"),)),
    ]
    assert [(e.hf, e.ours) for e in convert.embedding("wte", ("wte",))] == [
        ("wte.weight", (("wte", "embedding"),))
    ]


def test_encoder_layer_entries_leave_out_qkv_biases_when_asked():
    names = {("layer_norm1",): "ln", ("self_attn", "query"): "q", ("mlp", "fc1"): "fc"}
    with_bias = [e.hf for e in convert.encoder_layer("l.", ("l",), names)]
    assert with_bias == ["l.ln.weight", "l.ln.bias", "l.q.weight", "l.q.bias", "l.fc.weight",
                         "l.fc.bias"]  # fmt: skip
    without = [e.hf for e in convert.encoder_layer("l.", ("l",), names, qkv_bias=False)]
    assert "l.q.bias" not in without and "l.fc.bias" in without


class Tiny(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.fc = nnx.Linear(3, 2, rngs=rngs)
        self.ln = nnx.LayerNorm(2, rngs=rngs)


def tiny_checkpoint():
    rng = np.random.default_rng(0)
    return {
        "fc.weight": jnp.asarray(rng.normal(size=(2, 3)), jnp.float32),
        "fc.bias": jnp.asarray(rng.normal(size=(2,)), jnp.float32),
        "ln.weight": jnp.asarray(rng.normal(size=(2,)), jnp.float32),
        "ln.bias": jnp.asarray(rng.normal(size=(2,)), jnp.float32),
    }


def test_load_into_fills_an_abstract_model_from_the_table():
    table = Table((*convert.linear("fc", ("fc",)), *convert.layer_norm("ln", ("ln",))))
    abstract = nnx.eval_shape(lambda: Tiny(nnx.Rngs(0)))
    model = convert.load_into(abstract, table, tiny_checkpoint(), "tiny.safetensors")
    np.testing.assert_array_equal(model.fc.kernel[...], tiny_checkpoint()["fc.weight"].T)
    np.testing.assert_array_equal(model.ln.scale[...], tiny_checkpoint()["ln.weight"])


def test_load_into_an_abstract_model_needs_every_parameter_in_the_table():
    abstract = nnx.eval_shape(lambda: Tiny(nnx.Rngs(0)))
    with pytest.raises(ValueError, match="does not match the model's parameters"):
        convert.load_into(abstract, Table(tuple(convert.linear("fc", ("fc",)))), {}, "x")


def test_load_into_a_built_model_keeps_what_the_table_does_not_name():
    model = Tiny(nnx.Rngs(0))
    scale = np.asarray(model.ln.scale[...])
    table = Table(tuple(convert.linear("fc", ("fc",))))
    checkpoint = {k: v for k, v in tiny_checkpoint().items() if k.startswith("fc")}
    loaded = convert.load_into(model, table, checkpoint, "x")
    np.testing.assert_array_equal(loaded.ln.scale[...], scale)
    np.testing.assert_array_equal(loaded.fc.bias[...], checkpoint["fc.bias"])


def test_a_checkpoint_that_does_not_fit_lists_every_problem_at_once():
    table = Table((*convert.linear("fc", ("fc",)), *convert.layer_norm("ln", ("ln",))))
    checkpoint = tiny_checkpoint()
    del checkpoint["ln.bias"]
    checkpoint["fc.weight"] = jnp.zeros((3, 3))
    checkpoint["extra"] = jnp.zeros(1)
    abstract = nnx.eval_shape(lambda: Tiny(nnx.Rngs(0)))
    with pytest.raises(CheckpointMismatchError) as error:
        convert.load_into(abstract, table, checkpoint, "bad.safetensors")
    assert error.value.missing == ["ln.bias"] and error.value.unexpected == ["extra"]
    assert error.value.wrong_shape == ["fc.weight: checkpoint (3, 3), model (2, 3)"]
    assert "bad.safetensors does not fit the model" in str(error.value)
