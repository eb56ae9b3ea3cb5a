"""GPT-2 against transformers' GPT2LMHeadModel: same checkpoint, same inputs, same logits."""

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
from polyformer.models import gpt
from tests.models.gpt.reference import (
    OFFICIAL,
    TINY,
    hf_logits,
    left_padded,
    logits,
    random_hf_model,
)
from tests.models.gpt.test_gradient_parity import assert_gradient_parity
from tests.models.layer_outputs import assert_layers_match

CONFIGS = {
    "tiny": {},
    "untied": dict(tie_word_embeddings=False),
    "inverse_layer_idx": dict(scale_attn_by_inverse_layer_idx=True),
    "unscaled": dict(scale_attn_weights=False),
    "upcast": dict(reorder_and_upcast_attn=True),
    "gelu_exact_inner_eps": dict(activation_function="gelu", n_inner=200, layer_norm_epsilon=1e-3),
    "relu": dict(activation_function="relu"),
    "quick_gelu": dict(activation_function="quick_gelu", n_layer=2, n_head=4, n_embd=36),
}


def assert_logits_match(ours, hf_model, input_ids, mask=None):
    """Compares real positions only: transformers gives padded queries arbitrary values."""
    want = hf_logits(hf_model, input_ids, mask)
    got = np.asarray(
        logits(ours, jnp.asarray(input_ids), None if mask is None else jnp.asarray(mask))
    )
    assert got.dtype == np.float32
    real = np.ones(input_ids.shape, bool) if mask is None else mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", CONFIGS)
def test_logits_match_transformers(name, tmp_path):
    hf_model = random_hf_model(**CONFIGS[name])
    hf_model.save_pretrained(tmp_path)
    ours = pf.from_pretrained(tmp_path)
    vocab = hf_model.config.vocab_size
    longest, _ = left_padded(vocab, [hf_model.config.n_positions] * 2)
    assert_logits_match(ours, hf_model, longest)
    assert_logits_match(ours, hf_model, *left_padded(vocab, [13, 5, 1, 9], seed=1))


def test_hidden_states_match_transformers(tiny_checkpoint):
    hf_model, path = tiny_checkpoint
    input_ids, _ = left_padded(TINY["vocab_size"], [11])
    with torch.no_grad():
        want = hf_model(torch.as_tensor(input_ids), output_hidden_states=True).hidden_states
    forward = nnx.jit(lambda m, x: m(x, output_hidden_states=True))
    got = forward(pf.from_pretrained(path), jnp.asarray(input_ids)).hidden_states
    assert len(got) == len(want) == TINY["n_layer"] + 1
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=0)


def params(model) -> dict:
    return {path: np.asarray(v.get_value()) for path, v in nnx.to_flat_state(nnx.state(model))}


def test_every_weight_format_loads_the_same_parameters(tiny_checkpoint, tmp_path):
    hf_model, path = tiny_checkpoint
    want = params(pf.from_pretrained(path))
    state = hf_model.state_dict()  # a tied model: lm_head.weight repeats transformer.wte.weight
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((path / "config.json").read_text())
    torch.save(state, tmp_path / "bin" / "pytorch_model.bin")
    # The official checkpoints' layout: GPT2Model names (no "transformer.") and the causal-mask
    # buffers that older transformers versions stored.
    base = hf_model.transformer.state_dict()
    for i in range(TINY["n_layer"]):
        base[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 37, 37, dtype=torch.uint8))
        base[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text((path / "config.json").read_text())
    torch.save(base, tmp_path / "base" / "pytorch_model.bin")
    hf_model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    # transformers 5 writes no sharded .bin any more; older versions wrote this layout.
    (tmp_path / "sharded_bin").mkdir()
    (tmp_path / "sharded_bin" / "config.json").write_text((path / "config.json").read_text())
    names = list(state)
    weight_map = {}
    for shard, part in enumerate((names[:10], names[10:])):
        file = f"pytorch_model-{shard + 1:05d}-of-00002.bin"
        torch.save({n: state[n] for n in part}, tmp_path / "sharded_bin" / file)
        weight_map.update(dict.fromkeys(part, file))
    index = json.dumps({"weight_map": weight_map})
    (tmp_path / "sharded_bin" / "pytorch_model.bin.index.json").write_text(index)
    for fmt in ("bin", "base", "sharded", "sharded_bin"):
        got = params(pf.from_pretrained(tmp_path / fmt))
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{fmt}: {key}")


@pytest.mark.parametrize("tied", [True, False])
def test_transformers_to_ours_to_transformers_is_identity(tied, tmp_path):
    hf_model = random_hf_model(tie_word_embeddings=tied)
    hf_model.save_pretrained(tmp_path / "hf")
    pf.save_pretrained(pf.from_pretrained(tmp_path / "hf"), tmp_path / "ours")
    want = load_file(tmp_path / "hf" / "model.safetensors")
    got = load_file(tmp_path / "ours" / "model.safetensors")
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_ours_saved_loads_in_transformers_with_the_same_logits(tmp_path):
    config = gpt.GPT2Config.tiny(tie_word_embeddings=False, n_inner=150)
    ours = gpt.GPT2LMHeadModel(config, rngs=nnx.Rngs(3))
    pf.save_pretrained(ours, tmp_path)
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert_logits_match(ours, hf_model, *left_padded(config.vocab_size, [12, 7]))


@pytest.mark.heavy
@pytest.mark.usefixtures("optimized")
def test_official_gpt2_size_matches_transformers(tmp_path):
    """The 124M configuration (random weights: official ones cannot be downloaded here), one
    checkpoint: gradients with scan_layers on one sequence of 16 tokens (saving the
    checkpoint), then the unscanned model's logits on a left-padded batch."""
    hf_model = random_hf_model(**OFFICIAL)
    input_ids = np.random.default_rng(0).integers(0, OFFICIAL["vocab_size"], (1, 16))
    assert_gradient_parity(hf_model, tmp_path, input_ids, np.ones_like(input_ids), scan_layers=True)
    ours = pf.from_pretrained(tmp_path)
    assert ours.config == gpt.GPT2Config.gpt2()
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(ours, nnx.Param)))
    assert n_params == 124_439_808
    assert_logits_match(ours, hf_model, *left_padded(50257, [64, 40]))


def test_attentions_and_hidden_states_match_eager_transformers_with_left_padding(
    tiny_checkpoint,
):
    _, path = tiny_checkpoint
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(path, attn_implementation="eager")
    input_ids, mask = left_padded(TINY["vocab_size"], [11, 6, 9], seed=2)
    with torch.no_grad():
        want = hf_model(
            torch.as_tensor(input_ids),
            attention_mask=torch.as_tensor(mask),
            output_attentions=True,
            output_hidden_states=True,
        )
    forward = nnx.jit(lambda m, x, a: m(x, a, output_attentions=True, output_hidden_states=True))
    got = forward(pf.from_pretrained(path), jnp.asarray(input_ids), jnp.asarray(mask))
    # A left-padded query sees no key: transformers spreads its row evenly over all keys, we give
    # it zeros (as the kernels do), so only the rows and hidden states of real tokens compare.
    real = mask.astype(bool)
    rows = np.broadcast_to(real[:, None, :], (3, TINY["n_head"], real.shape[1]))
    assert_layers_match(got.attentions, want.attentions, TINY["n_layer"], 1e-5, rows)
    assert_layers_match(got.hidden_states, want.hidden_states, TINY["n_layer"] + 1, 1e-5, real)
    padded = np.asarray(got.attentions[0])[~rows]
    assert padded.shape == (int((~rows).sum()), 11) and not padded.any()
