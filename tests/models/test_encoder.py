"""The pre-LN encoder ViT and CLIP share, and the layers every family uses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from polyformer import attention as A
from polyformer.models.encoder import Encoder, EncoderInit
from polyformer.models.layers import layer_norm, training_rngs

WIDTH, HEADS, INNER = 12, 3, 20


def encoder(layers=2, **overrides):
    args = dict(
        hidden=WIDTH, num_heads=HEADS, intermediate=INNER, activation="gelu", epsilon=1e-5,
        kernel=A.Dense(), init=EncoderInit.uniform(0.02), dtype=jnp.float32,
        param_dtype=jnp.float32, rngs=nnx.Rngs(0),
    )  # fmt: skip
    return Encoder(layers, **{**args, **overrides})


def test_layer_norm_computes_torchs_layer_norm():
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(2, 5, WIDTH)).astype(np.float32)
    ours = layer_norm(WIDTH, 1e-5, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    want = torch.nn.LayerNorm(WIDTH, eps=1e-5)(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(ours(jnp.asarray(x)), want, atol=1e-5)


def test_encoder_returns_every_hidden_state_and_keeps_shapes():
    x = jax.random.normal(jax.random.key(0), (2, 7, WIDTH))
    out, hidden, attentions = encoder(layers=3)(x)
    assert out.shape == x.shape and len(hidden) == 4 and attentions is None
    np.testing.assert_array_equal(hidden[0], x)
    np.testing.assert_array_equal(hidden[-1], out)


@pytest.mark.parametrize("remat", ["none", "minimal"])
def test_output_attentions_gives_each_layers_probabilities_and_the_same_output(remat):
    model = encoder(layers=3, remat=remat)
    x = jax.random.normal(jax.random.key(0), (2, 7, WIDTH))
    mask = jnp.arange(7)[None] < jnp.array([[7], [4]])
    run = nnx.jit(lambda m, x: m(x, mask, causal=True, output_attentions=True))
    out, hidden, attentions = run(model, x)
    np.testing.assert_allclose(out, model(x, mask, causal=True)[0], atol=1e-6)
    assert len(attentions) == 3 and all(a.shape == (2, HEADS, 7, 7) for a in attentions)
    layer = model.layers[1]
    q, k = (p(layer.layer_norm1(hidden[1])).reshape(2, 7, HEADS, -1) for p in (
        layer.self_attn.query, layer.self_attn.key))  # fmt: skip
    want = A.Dense().probabilities(q, k, mask, causal=True)
    np.testing.assert_allclose(attentions[1], want, atol=1e-6)


def test_padding_does_not_change_the_real_positions():
    model = encoder()
    x = jax.random.normal(jax.random.key(1), (1, 5, WIDTH))
    padded = jnp.concatenate([x, jax.random.normal(jax.random.key(2), (1, 3, WIDTH))], axis=1)
    mask = jnp.arange(8)[None] < 5
    np.testing.assert_allclose(model(padded, mask)[0][:, :5], model(x)[0], atol=1e-5)


def test_causal_positions_do_not_see_later_ones():
    model = encoder()
    x = jax.random.normal(jax.random.key(3), (1, 6, WIDTH))
    changed = x.at[:, 4:].set(0.0)
    out, changed_out = model(x, causal=True)[0], model(changed, causal=True)[0]
    np.testing.assert_allclose(out[:, :4], changed_out[:, :4], atol=1e-6)
    assert not np.allclose(out[:, 4:], changed_out[:, 4:])


def test_dropout_runs_only_with_rngs():
    model = encoder(dropout=0.5)
    x = jax.random.normal(jax.random.key(4), (2, 5, WIDTH))
    np.testing.assert_array_equal(model(x)[0], model(x)[0])
    dropped = model(x, rngs=nnx.Rngs(dropout=0))[0]
    assert not np.allclose(dropped, model(x)[0])


def test_qkv_bias_false_builds_no_query_key_value_biases():
    layer = encoder(layers=1, qkv_bias=False).layers[0]
    assert layer.self_attn.query.bias is None and layer.self_attn.out.bias is not None


class Model(nnx.Module):
    def __init__(self):
        self.deterministic = True


def test_training_rngs_are_none_in_evaluation_mode_and_required_in_training_mode():
    model = Model()
    assert training_rngs(model, nnx.Rngs(0)) is None
    model.deterministic = False
    rngs = nnx.Rngs(dropout=0)
    assert training_rngs(model, rngs) is rngs
    with pytest.raises(ValueError, match="training mode: pass rngs"):
        training_rngs(model, None)
