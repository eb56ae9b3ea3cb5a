"""Every family in FAMILIES x every kernel family: a tiny config survives save_pretrained /
from_pretrained, the kernel swaps at load, jit changes nothing, and bfloat16 computation keeps
float32 outputs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import polyformer as pf
from polyformer import attention as A
from polyformer.attention import MultiHeadAttention
from polyformer.models import FAMILIES
from polyformer.training.objectives import OBJECTIVES

KERNELS = {
    "dense": A.Dense(),
    "sparse": A.Sparse(A.patterns.band(3) | A.patterns.global_tokens([0]), block=4),
    "favor": A.Favor(num_features=16),
}


def inputs(model_type: str, config) -> dict[str, np.ndarray]:
    """A batch of two for the family's model, HF input names."""
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(2, 3, 20, 20)).astype(np.float32)
    if model_type == "gpt2":
        return {"input_ids": rng.integers(0, config.vocab_size, (2, 9))}
    if model_type == "vit":
        return {"pixel_values": pixels}
    if model_type == "clip":
        ids = rng.integers(0, config.text_config.vocab_size, (2, 7))
        ids[:, -1] = config.text_config.eos_token_id
        return {
            "input_ids": ids,
            "pixel_values": rng.normal(size=(2, 3, 20, 20)).astype(np.float32),
        }
    if model_type == "wav2vec2":
        return {"input_values": rng.normal(size=(2, 1600)).astype(np.float32)}
    token_types = np.zeros((2, 11, 7), np.int32)
    token_types[:, 4:, 1] = np.arange(7) % 3 + 1  # column ids
    token_types[:, 4:, 2] = np.arange(7) // 3 + 1  # row ids
    return {"input_ids": rng.integers(0, config.vocab_size, (2, 11)), "token_type_ids": token_types}


def first_output(out) -> jax.Array:
    """The family's main output: logits, similarity logits or the last hidden state."""
    for name in ("logits", "logits_per_image", "last_hidden_state"):
        if getattr(out, name, None) is not None:
            return getattr(out, name)
    raise AssertionError(f"no known output field in {type(out).__name__}")


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def saved(request, tmp_path_factory):
    """(model_type, a tiny model of the family, the directory save_pretrained wrote it to)."""
    family = FAMILIES[request.param]
    model = family.build(family.config.tiny(), rngs=nnx.Rngs(0))
    directory = tmp_path_factory.mktemp(request.param)
    pf.save_pretrained(model, directory)
    return request.param, model, directory


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_a_tiny_model_round_trips_under_every_kernel(saved, kernel):
    model_type, model, directory = saved
    batch = {k: jnp.asarray(v) for k, v in inputs(model_type, model.config).items()}
    loaded = pf.from_pretrained(directory, attention=KERNELS[kernel])
    kernels = [m.kernel for _, m in nnx.iter_graph(loaded) if isinstance(m, MultiHeadAttention)]
    assert kernels and all(k == KERNELS[kernel] for k in kernels)
    assert type(loaded) is type(model)
    assert loaded.config == dataclasses.replace(model.config, attention=KERNELS[kernel])
    eager = first_output(loaded(**batch))
    jitted = first_output(nnx.jit(lambda m, b: m(**b))(loaded, batch))
    np.testing.assert_allclose(jitted, eager, atol=1e-5, rtol=1e-5)
    assert np.all(np.isfinite(eager))
    if kernel == "dense":  # the saved model's own kernel is Dense
        np.testing.assert_allclose(eager, first_output(model(**batch)), atol=1e-6, rtol=0)


def test_bfloat16_computation_keeps_float32_outputs(saved):
    model_type, model, directory = saved
    batch = {k: jnp.asarray(v) for k, v in inputs(model_type, model.config).items()}
    loaded = pf.from_pretrained(directory, dtype=jnp.bfloat16)
    params = jax.tree.leaves(nnx.state(loaded, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)
    assert loaded.config.dtype == jnp.bfloat16
    out = first_output(loaded(**batch))
    assert out.dtype == jnp.float32 and np.all(np.isfinite(out))
    want = first_output(model(**batch))
    np.testing.assert_allclose(out, want, atol=0.1 * float(jnp.max(jnp.abs(want))) + 0.05)


def test_every_familys_objectives_are_training_objectives():
    for family in FAMILIES.values():
        assert family.objectives and set(family.objectives) <= set(OBJECTIVES)
