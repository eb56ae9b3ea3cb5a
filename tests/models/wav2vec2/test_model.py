"""Wav2Vec2ForCTC / Wav2Vec2Model against transformers: logits, hidden states, padded batches,
checkpoints both ways, both weight-norm namings, kernels and training mode.

What is compared: float32 logits (and hidden states) at 1e-4 absolute. Without an attention mask
(how the group-norm models are used: padding is audio of value 0) every frame is compared; with
one, the frames of each row up to feat_extract_output_lengths(its samples), the frames HF's own
mask marks as real."""

import json

import jax
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
    TINY,
    hf_forward,
    logits,
    padded_audio,
    random_hf_model,
)

ATOL = 1e-4
# group: GroupNorm feature encoder + post-LN encoder (base-960h, large-960h);
# layer: LayerNorm feature encoder with conv biases + pre-LN encoder (lv60).
VARIANTS = {
    "group": dict(TINY),
    "layer": dict(TINY, feat_extract_norm="layer", conv_bias=True, do_stable_layer_norm=True),
}
LENGTHS = [1600, 1111]  # 0.1 s and 0.07 s: 79 and 55 frames at TINY's strides


def real_frames(config, attention_mask) -> np.ndarray:
    """Boolean `[batch, frames]`: the frames HF treats as real for this sample mask."""
    lengths = wav2vec2.feat_extract_output_lengths(config, attention_mask.sum(-1))
    frames = wav2vec2.feat_extract_output_lengths(config, attention_mask.shape[1])
    return np.arange(frames)[None] < lengths[:, None]


def assert_close(ours, theirs, where=None, atol=ATOL):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape
    if where is not None:
        ours, theirs = ours[where], theirs[where]
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=atol)


@pytest.fixture(scope="module", params=list(VARIANTS))
def checkpoint(request, tmp_path_factory):
    """(variant name, the transformers model, its save_pretrained directory, our model)."""
    hf_model = random_hf_model(VARIANTS[request.param])
    path = tmp_path_factory.mktemp(f"w2v-{request.param}")
    hf_model.save_pretrained(path)
    return request.param, hf_model, path, pf.from_pretrained(path)


def test_padded_batch_logits_match_transformers(checkpoint):
    variant, hf_model, _, ours = checkpoint
    audio, mask = padded_audio(LENGTHS)
    # No mask: how base-960h is used; the zeros are audio to both models, every frame counts.
    assert_close(logits(ours, audio), hf_forward(hf_model, audio).logits)
    # The mask path, how lv60 is used: zeroed padded frames, key-padding mask in attention.
    real = real_frames(ours.config, mask)
    assert real.sum(1).tolist() == [79, 55]
    assert_close(logits(ours, audio, mask), hf_forward(hf_model, audio, mask).logits, real)
    # With LayerNorm convs a row's real frames do not depend on the padding after it; the
    # GroupNorm conv normalises over all samples, the padding included, in HF as here.
    alone = logits(ours, audio[1:, : LENGTHS[1]], mask[1:, : LENGTHS[1]])
    padded = logits(ours, audio, mask)[1:, :55]
    assert np.allclose(padded, alone, atol=1e-5) == (variant == "layer")


def test_hidden_states_match_transformers(checkpoint):
    _, hf_model, _, ours = checkpoint
    audio, mask = padded_audio(LENGTHS, seed=1)
    real = real_frames(ours.config, mask)
    out = nnx.jit(lambda m, x, a: m(x, a, output_hidden_states=True))(ours, audio, mask)
    ref = hf_forward(hf_model, audio, mask, output_hidden_states=True)
    assert len(out.hidden_states) == len(ref.hidden_states) == ours.config.num_hidden_layers + 1
    for got, want in zip(out.hidden_states, ref.hidden_states, strict=True):
        assert_close(got, want.numpy(), real)


def test_base_model_outputs_match_transformers(tmp_path):
    """Wav2Vec2Model (architectures in config.json picks it): last_hidden_state and
    extract_features, and its checkpoint (no `wav2vec2.` prefix) written back as it was."""
    hf_model = random_hf_model(VARIANTS["layer"], head="Wav2Vec2Model")
    hf_model.save_pretrained(tmp_path / "hf")
    ours = pf.from_pretrained(tmp_path / "hf")
    assert isinstance(ours, wav2vec2.Wav2Vec2Model)
    audio, mask = padded_audio(LENGTHS, seed=2)
    real = real_frames(ours.config, mask)
    out = nnx.jit(lambda m, x, a: m(x, a))(ours, audio, mask)
    ref = hf_forward(hf_model, audio, mask)
    assert_close(out.last_hidden_state, ref.last_hidden_state.numpy(), real)
    assert_close(out.extract_features, ref.extract_features.numpy(), real)
    pf.save_pretrained(ours, tmp_path / "ours")
    want = load_file(tmp_path / "hf" / "model.safetensors")
    got = load_file(tmp_path / "ours" / "model.safetensors")
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_spec_augment_time_mask_matches_transformers(checkpoint):
    """mask_time_indices replaces frames by masked_spec_embed, as HF does when it is given."""
    _, hf_model, _, ours = checkpoint
    audio, _ = padded_audio([1600, 1600], seed=3)
    indices = np.zeros((2, 79), bool)
    indices[0, 10:20] = indices[1, 40:45] = True
    got = nnx.jit(lambda m, x, i: m(x, mask_time_indices=i).logits)(ours, audio, indices)
    want = hf_forward(hf_model, audio, mask_time_indices=torch.as_tensor(indices)).logits
    assert_close(got, want.numpy())
    assert not np.allclose(got, logits(ours, audio), atol=1e-3)


def test_transformers_to_ours_to_transformers_is_identity(checkpoint, tmp_path):
    _, _, path, ours = checkpoint
    pf.save_pretrained(ours, tmp_path)
    want = load_file(path / "model.safetensors")
    got = load_file(tmp_path / "model.safetensors")
    assert got.keys() == want.keys()  # parametrizations.weight.original0/1, as 5.x writes
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert Wav2Vec2Config.from_hf(json.loads((tmp_path / "config.json").read_text())) == (
        ours.config
    )


def test_ours_saved_loads_in_transformers_without_missing_keys(checkpoint, tmp_path):
    _, _, _, ours = checkpoint
    pf.save_pretrained(ours, tmp_path)
    hf_model, info = transformers.Wav2Vec2ForCTC.from_pretrained(tmp_path, output_loading_info=True)
    assert all(not v for v in info.values()), info
    audio, mask = padded_audio(LENGTHS)
    want = hf_forward(hf_model.eval(), audio, mask).logits.numpy()
    assert_close(logits(ours, audio, mask), want, real_frames(ours.config, mask))


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


def test_spec_augment_spans_are_drawn_as_transformers_draws_them():
    """Masked share, span shape and row lengths against HF's _compute_mask_indices."""
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

    lengths, size, opts = np.array([120, 60]), 120, dict(prob=0.3, span=7, min_masks=2)
    draw = jax.jit(
        jax.vmap(lambda key: wav2vec2.spec_augment_mask(key, jnp.asarray(lengths), size, **opts))
    )
    ours = np.asarray(draw(jax.random.split(jax.random.key(0), 400)))
    np.random.seed(0)  # noqa: NPY002 (HF draws from numpy's global generator)
    attention = np.arange(size)[None] < lengths[:, None]
    theirs = np.stack([
        _compute_mask_indices((2, size), 0.3, 7, torch.as_tensor(attention), min_masks=2)
        for _ in range(400)
    ])  # fmt: skip
    assert not ours[:, 1, 60:].any()  # nothing past a row's real frames
    for row in range(2):
        np.testing.assert_allclose(ours[:, row].mean(), theirs[:, row].mean(), atol=0.02)
    # Every masked run is a union of whole spans: no run shorter than the span length.
    runs = np.diff(np.pad(ours.astype(int), ((0, 0), (0, 0), (1, 1))), axis=-1)
    starts, ends = np.nonzero(runs == 1), np.nonzero(runs == -1)
    assert (ends[2] - starts[2]).min() >= 7


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


def _official_parity(config_json, tmp_path, with_mask_only: bool):
    """One forward on ~1 s of audio: two utterances (1.0 s and 0.7 s) in one padded batch."""
    hf_model = random_hf_model(config_json)
    hf_model.save_pretrained(tmp_path)
    ours = pf.from_pretrained(tmp_path)
    assert ours.config == Wav2Vec2Config.from_hf(config_json)
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(ours, nnx.Param)))
    assert n_params == sum(p.numel() for p in hf_model.parameters())
    audio, mask = padded_audio([16000, 11200], seed=6)
    real = real_frames(ours.config, mask)
    assert real.sum(1).tolist() == [49, 34]
    assert_close(logits(ours, audio, mask), hf_forward(hf_model, audio, mask).logits, real)
    if not with_mask_only:
        assert_close(logits(ours, audio), hf_forward(hf_model, audio).logits)


@pytest.mark.heavy
def test_base_960h_configuration_matches_transformers(tmp_path):
    """facebook/wav2vec2-base-960h's configuration, random weights: padded without a mask (as
    its feature extractor, return_attention_mask=False, prepares batches) and with one."""
    _official_parity(BASE_960H, tmp_path, with_mask_only=False)


@pytest.mark.heavy
def test_large_960h_lv60_self_configuration_matches_transformers(tmp_path):
    """facebook/wav2vec2-large-960h-lv60-self's configuration, random weights, padded with an
    attention mask (its feature extractor returns one)."""
    _official_parity(LARGE_LV60_SELF, tmp_path, with_mask_only=True)
