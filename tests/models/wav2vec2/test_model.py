"""Wav2Vec2's weight-norm namings, kernels, training mode, bfloat16, errors and configs."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file

import polyformer as pf
from polyformer import attention as A
from polyformer.models import wav2vec2
from polyformer.models.convert import CheckpointMismatchError
from polyformer.models.wav2vec2 import Wav2Vec2Config
from tests.models.wav2vec2.reference import (
    BASE_960H,
    LARGE_LV60_SELF,
    LENGTHS,
    assert_close,
    logits,
    padded_audio,
    real_frames,
)


def test_old_weight_norm_names_load(checkpoint, tmp_path):
    """`weight_g` / `weight_v` (torch.nn.utils.weight_norm: the official checkpoints) and the
    checkpoint of the bare base model (no `wav2vec2.` prefix) load the same parameters."""
    _, _, path, ours = checkpoint
    tensors = load_file(path / "model.safetensors")
    old = {
        k.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        ): v
        for k, v in tensors.items()
    }
    assert sum("weight_g" in k or "weight_v" in k for k in old) == 2
    save_file(old, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    loaded = pf.from_pretrained(tmp_path)
    want = nnx.to_flat_state(nnx.state(ours, nnx.Param))
    got = dict(nnx.to_flat_state(nnx.state(loaded, nnx.Param)))
    for key, var in want:
        np.testing.assert_array_equal(got[key].get_value(), var.get_value(), err_msg=str(key))
    # Both names of one factor at once is a broken checkpoint.
    name = "wav2vec2.encoder.pos_conv_embed.conv.weight_g"
    both = {**old, name.replace("weight_g", "parametrizations.weight.original0"): old[name]}
    save_file(both, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointMismatchError, match="unexpected"):
        pf.from_pretrained(tmp_path)


def test_masked_spec_embed_is_dropped_when_spec_augment_is_off(checkpoint, tmp_path):
    _, _, path, ours = checkpoint
    config = json.loads((path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "mask_time_prob": 0.0}))
    (tmp_path / "model.safetensors").symlink_to(path / "model.safetensors")
    loaded = pf.from_pretrained(tmp_path)
    assert not hasattr(loaded.wav2vec2, "masked_spec_embed")
    assert "wav2vec2.masked_spec_embed" in load_file(path / "model.safetensors")


def test_weight_norm_matches_torch():
    g = np.abs(np.random.default_rng(0).standard_normal((1, 1, 5))).astype(np.float32)
    v = np.random.default_rng(1).standard_normal((6, 2, 5)).astype(np.float32)
    conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(6, 6, 5, groups=3), dim=2)
    with torch.no_grad():
        conv.parametrizations.weight.original0.copy_(torch.as_tensor(g))
        conv.parametrizations.weight.original1.copy_(torch.as_tensor(v))
        want = conv.weight.numpy().transpose(2, 1, 0)
    np.testing.assert_allclose(wav2vec2.model.weight_norm_kernel(g, v), want, rtol=1e-6)


def test_band_covering_every_frame_equals_dense(checkpoint):
    """The kernel is the config's: Sparse(band) wider than the audio is Dense, FAVOR+ runs on
    the same parameters (the pre-LN variant: the kernels see the same calls in both)."""
    variant, _, path, ours = checkpoint
    if variant != "layer":
        pytest.skip("one variant is enough: the attention calls are the same in both")
    audio, mask = padded_audio(LENGTHS, seed=5)
    real = real_frames(ours.config, mask)
    dense = logits(ours, audio, mask)
    wide = pf.from_pretrained(path, attention=A.Sparse(A.patterns.band(100), block=16))
    assert_close(logits(wide, audio, mask), dense, real, atol=1e-5)
    favor = A.Favor(num_features=32)
    model = pf.from_pretrained(path, attention=favor)
    assert all(layer.attention.kernel == favor for layer in model.wav2vec2.encoder.layers)
    other = logits(model, audio, mask)
    assert other.shape == dense.shape and np.isfinite(other).all()


def test_training_mode_needs_rngs_and_drops_out(checkpoint):
    variant, _, _, ours = checkpoint
    if variant != "group":
        pytest.skip("one variant is enough: dropout sits in the same places in both")
    model = nnx.clone(ours)  # dropout 0.1, LayerDrop 0.1, SpecAugment on: HF's defaults
    audio, _ = padded_audio([1600, 1600])
    eval_logits = logits(model, audio)
    model.train()
    with pytest.raises(ValueError, match="rngs"):
        model(audio)
    train = nnx.jit(lambda m, x, rngs: m(x, rngs=rngs).logits)
    a, b = (train(model, audio, nnx.Rngs(dropout=s)) for s in (1, 2))
    assert not np.allclose(a, b) and not np.allclose(a, eval_logits)
    model.eval()
    np.testing.assert_array_equal(logits(model, audio), eval_logits)


def test_training_mode_draws_spec_augment_spans(checkpoint):
    """In training, frames in drawn spans become masked_spec_embed, the others stay."""
    variant, _, _, ours = checkpoint
    if variant != "group":
        pytest.skip("one variant is enough: SpecAugment is the same in both")
    model = ours.wav2vec2  # mask_time_prob 0.05, spans of 10, at least 2
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 79, 36)), jnp.float32)
    out = np.asarray(model._spec_augment(x, None, None, nnx.Rngs(dropout=1)))
    masked = np.all(out == np.asarray(model.masked_spec_embed[...]), axis=-1)
    assert masked.sum(-1).min() >= 10 and masked.sum(-1).max() <= 20  # 2 spans of 10
    np.testing.assert_array_equal(out[~masked], np.asarray(x)[~masked])
    np.testing.assert_array_equal(model._spec_augment(x, None, None, None), x)  # evaluation


def test_bfloat16_propagates_and_logits_stay_float32(checkpoint):
    variant, _, path, ours = checkpoint
    if variant != "group":
        pytest.skip("one variant is enough: dtypes are set the same way in both")
    model = pf.from_pretrained(path, dtype=jnp.bfloat16)
    audio, _ = padded_audio([1600])
    out = nnx.jit(lambda m, x: m(x, output_hidden_states=True))(model, audio)
    assert out.logits.dtype == jnp.float32
    assert all(h.dtype == jnp.bfloat16 for h in out.hidden_states)
    assert model.wav2vec2.encoder.layers[0].attention.query.kernel.dtype == jnp.float32
    assert_close(out.logits, logits(ours, audio), atol=0.1)


def test_bad_inputs_and_configs_raise_clear_errors():
    # Every check comes before any computation: a model without parameter values will do.
    model = nnx.eval_shape(lambda: wav2vec2.Wav2Vec2Model(Wav2Vec2Config.tiny(), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"\[batch, samples\]"):
        model(jnp.zeros((1600,)))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model(jnp.zeros((2, 1600)), jnp.ones((2, 1500)))
    with pytest.raises(ValueError, match="receptive field"):
        model(jnp.zeros((1, 20)))
    with pytest.raises(ValueError, match="mask_time_indices has shape"):
        model(jnp.zeros((1, 1600)), mask_time_indices=jnp.zeros((1, 5), bool))
    for bad, match in (
        (dict(feat_extract_norm="batch"), "feat_extract_norm"),
        (dict(add_adapter=True), "adapter"),
        (dict(conv_kernel=(10, 3)), "one entry per"),
        (dict(architectures=("Wav2Vec2ForPreTraining",)), "not supported"),
        (dict(hidden_act="nope"), "unknown activation"),
    ):
        with pytest.raises(ValueError, match=match):
            Wav2Vec2Config.tiny(**bad)
    with pytest.raises(ValueError, match="num_feat_extract_layers"):
        Wav2Vec2Config.from_hf({"conv_dim": [8, 8], "num_feat_extract_layers": 3})


def test_official_configs_read_from_config_json():
    assert Wav2Vec2Config.from_hf(BASE_960H) == Wav2Vec2Config.base_960h()
    assert Wav2Vec2Config.from_hf(LARGE_LV60_SELF) == Wav2Vec2Config.large_960h_lv60_self()
    no_head = {k: v for k, v in BASE_960H.items() if k != "architectures"}
    assert Wav2Vec2Config.from_hf(no_head).architecture == "Wav2Vec2ForCTC"
    hf = Wav2Vec2Config.base_960h().to_hf()
    assert transformers.Wav2Vec2Config(**hf).to_dict()["conv_kernel"] == [10, 3, 3, 3, 3, 2, 2]
