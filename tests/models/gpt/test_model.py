"""GPT-2's config, modes, dtypes and decoding, without transformers."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from polyformer import attention as A
from polyformer.models import gpt
from polyformer.models.gpt import GPT2Config, GPT2LMHeadModel
from tests.models.gpt.reference import logits


@pytest.fixture(scope="module")
def model():
    return GPT2LMHeadModel(GPT2Config.tiny(), rngs=nnx.Rngs(0))


def ids(batch: int, length: int, seed: int = 0) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, 1031)


def test_config_reads_and_writes_config_json_fields():
    config = GPT2Config.tiny(activation_function="relu", eos_token_id=(3, 4), n_inner=50)
    hf = config.to_hf()
    assert hf["model_type"] == "gpt2" and hf["eos_token_id"] == [3, 4] and hf["n_inner"] == 50
    assert GPT2Config.from_hf({**hf, "use_cache": True, "n_ctx": 37}) == config
    with pytest.raises(ValueError, match="add_cross_attention"):
        GPT2Config.from_hf({**hf, "add_cross_attention": True})


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(activation_function="gelu_newest"), "unknown activation function 'gelu_newest'"),
        (dict(n_embd=100, n_head=6), "n_embd=100 is not divisible by n_head=6"),
        (dict(n_layer=0), "n_layer must be positive"),
    ],
)
def test_bad_configs_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        GPT2Config.tiny(**fields)


def test_inputs_longer_than_n_positions_are_refused(model):
    with pytest.raises(ValueError, match="38 positions do not fit: .* n_positions=37"):
        model(ids(1, 38))
    with pytest.raises(ValueError, match="n_positions=37"):
        model.init_cache(1, 38)


def test_parameters_carry_logical_axes(model):
    state = nnx.state(model, nnx.Param)
    assert state["wte"]["embedding"].out_sharding == ("vocab", "embed")
    assert state["h"][0]["mlp"]["c_fc"]["kernel"].out_sharding == ("embed", "mlp")
    assert state["h"][0]["attn"]["query"]["kernel"].out_sharding == ("embed", "heads")


@nnx.jit
def train_logits(model, input_ids, rngs):
    return model(input_ids, rngs=rngs).logits


def test_dropout_runs_in_training_mode_only():
    model = GPT2LMHeadModel(GPT2Config.tiny(n_layer=1), rngs=nnx.Rngs(0))
    x = ids(2, 9)
    eval_logits = logits(model, x)
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        logits(model, x)
    first = train_logits(model, x, nnx.Rngs(dropout=1))
    again = train_logits(model, x, nnx.Rngs(dropout=1))
    other = train_logits(model, x, nnx.Rngs(dropout=2))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    assert not np.allclose(first, eval_logits)
    model.eval()
    np.testing.assert_array_equal(train_logits(model, x, nnx.Rngs(dropout=1)), eval_logits)


def test_bfloat16_propagates_and_logits_stay_float32():
    config = GPT2Config.tiny(n_layer=1, dtype=jnp.bfloat16)
    model = GPT2LMHeadModel(config, rngs=nnx.Rngs(0))
    full = GPT2LMHeadModel(dataclasses.replace(config, dtype=jnp.float32), rngs=nnx.Rngs(0))
    out = nnx.jit(lambda m, x: m(x, output_hidden_states=True))(model, ids(2, 7))
    assert all(h.dtype == jnp.bfloat16 for h in out.hidden_states)
    assert out.logits.dtype == jnp.float32
    np.testing.assert_allclose(out.logits, logits(full, ids(2, 7)), atol=0.05)


@nnx.jit
def decode(model, input_ids, cache, position_ids, attention_mask):
    return model.decode(input_ids, cache, position_ids=position_ids, attention_mask=attention_mask)


def decode_in_pieces(model, input_ids, mask, pieces):
    """Logits of `input_ids` fed to model.decode `pieces` tokens at a time."""
    cache = model.init_cache(input_ids.shape[0], input_ids.shape[1])
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    outs, start = [], 0
    for n in pieces:
        piece = slice(start, start + n)
        out, cache = decode(model, input_ids[:, piece], cache, positions[:, piece], mask[:, piece])
        outs.append(out)
        start += n
    return jnp.concatenate(outs, axis=1)


KERNELS = {
    "dense": A.Dense(),
    "sparse_band": A.Sparse(A.patterns.band(64), block=4),  # wider than the inputs: exact
    "favor": A.Favor(num_features=64),
}


@pytest.mark.parametrize("name", KERNELS)
def test_decode_equals_the_full_forward(name):
    """Prefill then one token at a time gives the logits of one pass over the whole sequence,
    for each kernel (left padding, positions from the attention mask as generate makes them)."""
    model = GPT2LMHeadModel(GPT2Config.tiny(attention=KERNELS[name]), rngs=nnx.Rngs(0))
    input_ids = ids(2, 12, seed=3)
    mask = jnp.ones((2, 12), jnp.int32).at[1, :4].set(0)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    want = logits(model, input_ids, mask, positions)
    got = decode_in_pieces(model, input_ids, mask, [6] + [1] * 6)
    np.testing.assert_allclose(got[0], want[0], atol=1e-4)
    np.testing.assert_allclose(got[1, 4:], want[1, 4:], atol=1e-4)


@pytest.mark.parametrize("name", KERNELS)
def test_two_packed_sequences_give_the_logits_each_gives_alone(name):
    """segment_ids reach every layer's kernel; positions restart with each sequence."""
    model = GPT2LMHeadModel(GPT2Config.tiny(attention=KERNELS[name]), rngs=nnx.Rngs(0))
    first, second = ids(1, 7, seed=4), ids(1, 11, seed=5)
    packed = nnx.jit(lambda m, x, p, s: m(x, position_ids=p, segment_ids=s).logits)(
        model,
        jnp.concatenate([first, second], axis=1),
        jnp.array([[*range(7), *range(11)]]),
        jnp.array([[0] * 7 + [1] * 11]),
    )
    np.testing.assert_allclose(packed[:, :7], logits(model, first), atol=1e-5)
    np.testing.assert_allclose(packed[:, 7:], logits(model, second), atol=1e-5)


def test_a_sparse_band_wider_than_the_input_gives_the_dense_logits():
    dense = GPT2LMHeadModel(GPT2Config.tiny(), rngs=nnx.Rngs(0))
    sparse = GPT2LMHeadModel(GPT2Config.tiny(attention=KERNELS["sparse_band"]), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(logits(sparse, ids(2, 20)), logits(dense, ids(2, 20)), atol=1e-5)


def test_the_table_covers_every_parameter_once():
    for tied in (True, False):
        config = GPT2Config.tiny(tie_word_embeddings=tied)
        abstract = nnx.eval_shape(lambda config=config: GPT2LMHeadModel(config, rngs=nnx.Rngs(0)))
        paths = {path for path, _ in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}
        gpt.convert.table(config).check_covers(paths)
        assert (("lm_head", "kernel") in paths) == (not tied)
