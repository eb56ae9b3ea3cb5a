"""Capture and patch by transformers module path, against transformers' forward hooks on the same
weights: every family, eager and under jit, and the model unchanged afterwards."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import treescope
from flax import nnx

import polyformer as pf
from polyformer import interp
from tests.models.clip import reference as clip_ref
from tests.models.gpt import reference as gpt_ref
from tests.models.tapas import reference as tapas_ref
from tests.models.vit import reference as vit_ref
from tests.models.wav2vec2 import reference as wav2vec2_ref
from tests.test_families import first_output, inputs

HF_MODELS = {
    "gpt2": gpt_ref.random_hf_model,
    "vit": vit_ref.random_hf_model,
    "clip": clip_ref.random_hf_model,
    "wav2vec2": lambda: wav2vec2_ref.random_hf_model(wav2vec2_ref.TINY),
    "tapas": tapas_ref.random_hf_model,
}

# Per family: (a block: the residual stream after it, its attention, an MLP), then the MLP of
# the first layer, which the patch tests zero.
PATHS = {
    "gpt2": (
        ("transformer.h.1", "transformer.h.1.attn", "transformer.h.1.mlp"),
        "transformer.h.0.mlp",
    ),
    "vit": (("vit.layers.1", "vit.layers.1.attention", "vit.layers.0.mlp"), "vit.layers.0.mlp"),
    "clip": (
        (
            "text_model.encoder.layers.1",
            "text_model.encoder.layers.0.self_attn",
            "vision_model.encoder.layers.1.mlp",
        ),
        "vision_model.encoder.layers.0.mlp",
    ),
    "wav2vec2": (
        (
            "wav2vec2.encoder.layers.1",
            "wav2vec2.encoder.layers.1.attention",
            "wav2vec2.encoder.layers.0.feed_forward",
        ),
        "wav2vec2.encoder.layers.0.feed_forward",
    ),
    "tapas": (
        (
            "tapas.encoder.layer.1",
            "tapas.encoder.layer.0.attention.output.LayerNorm",
            "tapas.encoder.layer.1.output.dense",
        ),
        "tapas.encoder.layer.0.output.dense",
    ),
}


@pytest.fixture(scope="module", params=sorted(HF_MODELS))
def pair(request, tmp_path_factory):
    """(model_type, transformers' random model, ours loaded from its save_pretrained, inputs)."""
    hf = HF_MODELS[request.param]()
    directory = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(directory)
    ours = pf.from_pretrained(directory)
    batch = inputs(request.param, ours.config)
    return request.param, hf, ours, batch


def first(output):
    """A torch module's main output: the first of a tuple (attention returns its weights too)."""
    return output[0] if isinstance(output, tuple) else output


def hf_run(hf, batch, capture=(), patch=None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """transformers' main output and the outputs of `capture`, with `patch` (path -> function of
    the main output) applied through forward hooks."""
    captured, handles = {}, []

    def hook(path):
        def run(module, args, output):
            if path in (patch or {}):
                value = patch[path](first(output))
                output = (value, *output[1:]) if isinstance(output, tuple) else value
            captured[path] = first(output).numpy()
            return output

        return run

    for path in {*capture, *(patch or {})}:
        handles.append(hf.get_submodule(path).register_forward_hook(hook(path)))
    try:
        with torch.no_grad():
            out = hf(**{k: torch.as_tensor(v) for k, v in batch.items()})
    finally:
        for handle in handles:
            handle.remove()
    return first_output(out).numpy(), {path: captured[path] for path in capture}


def jitted_run(model, batch, capture=(), patch=None):
    return nnx.jit(lambda m, b: interp.run(m, capture=capture, patch=patch, **b))(
        model, {k: jnp.asarray(v) for k, v in batch.items()}
    )


def test_captures_equal_transformers_forward_hooks(pair):
    model_type, hf, ours, batch = pair
    paths = PATHS[model_type][0]
    _, want = hf_run(hf, batch, capture=paths)
    out, got = interp.run(ours, capture=paths, **{k: jnp.asarray(v) for k, v in batch.items()})
    assert list(got) == list(paths)
    for path in paths:
        assert got[path].shape == want[path].shape, path
        np.testing.assert_allclose(got[path], want[path], atol=1e-5, rtol=0, err_msg=path)
    jit_out, jit_got = jitted_run(ours, batch, capture=paths)
    np.testing.assert_allclose(first_output(jit_out), first_output(out), atol=1e-5, rtol=0)
    for path in paths:
        np.testing.assert_allclose(jit_got[path], got[path], atol=1e-5, rtol=0, err_msg=path)


def test_zeroing_an_mlp_changes_the_output_as_a_torch_hook_does(pair):
    model_type, hf, ours, batch = pair
    mlp = PATHS[model_type][1]
    plain, _ = hf_run(hf, batch)
    want, want_captured = hf_run(hf, batch, capture=(mlp,), patch={mlp: torch.zeros_like})
    out, captured = jitted_run(ours, batch, capture=(mlp,), patch={mlp: jnp.zeros_like})
    assert np.abs(want - plain).max() > 1e-3  # the patch matters
    np.testing.assert_allclose(first_output(out), want, atol=1e-5, rtol=0)
    assert not np.any(captured[mlp]) and not np.any(want_captured[mlp])  # captured after patching


def test_the_model_is_unchanged_after_a_run(pair):
    model_type, _, ours, batch = pair
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    graphdef, state = nnx.split(ours)
    before = first_output(ours(**batch))
    mlp = PATHS[model_type][1]
    interp.run(ours, capture=PATHS[model_type][0], patch={mlp: jnp.zeros_like}, **batch)
    jitted_run(ours, batch, capture=PATHS[model_type][0], patch={mlp: jnp.zeros_like})
    again_graphdef, again = nnx.split(ours)
    assert again_graphdef == graphdef
    jax.tree.map(np.testing.assert_array_equal, again, state)
    np.testing.assert_array_equal(first_output(ours(**batch)), before)


def test_patching_a_residual_stream_with_another_inputs_equals_a_torch_hook(pair):
    model_type, hf, ours, batch = pair
    block = PATHS[model_type][0][0]
    other = {k: v[::-1].copy() for k, v in batch.items()}  # the batch's rows swapped
    _, theirs = hf_run(hf, other, capture=(block,))
    want, _ = hf_run(hf, batch, patch={block: lambda _: torch.as_tensor(theirs[block])})
    _, captured = jitted_run(ours, other, capture=(block,))
    out, _ = jitted_run(ours, batch, patch={block: lambda _: captured[block]})
    np.testing.assert_allclose(first_output(out), want, atol=1e-5, rtol=0)


def test_an_unknown_path_names_the_nearest_valid_ones(pair):
    model_type, _, ours, batch = pair
    with pytest.raises(interp.ModulePathError, match=r"'encoder\.nope'.* nearest valid paths: "):
        interp.run(ours, capture=("encoder.nope",), **batch)
    block = PATHS[model_type][0][0]
    with pytest.raises(interp.ModulePathError, match=f"nearest valid paths: {block}"):
        interp.run(ours, capture=(block + ".dropout",), **batch)
    with pytest.raises(ValueError, match="must be a function"):
        interp.run(ours, patch={block: 0.0}, **batch)
    with pytest.raises(ValueError, match=f"patch\\['{block}'\\] must return what the module"):
        interp.run(ours, patch={block: lambda x: x[:, :1]}, **batch)


@pytest.mark.parametrize("pair", ["wav2vec2"], indirect=True)
def test_a_tuple_output_is_captured_whole(pair):
    _, hf, ours, batch = pair
    path = "wav2vec2.feature_projection"  # (projected, layer-normed input), in HF as in ours
    captured = {}
    hook = hf.get_submodule(path).register_forward_hook(
        lambda module, args, output: captured.update(want=[x.numpy() for x in output])
    )
    try:
        hf_run(hf, batch)
    finally:
        hook.remove()
    # projected, and the layer-normed input doubled (read only by output_hidden_states)
    _, got = jitted_run(ours, batch, capture=(path,), patch={path: lambda x: (x[0], 2 * x[1])})
    assert isinstance(got[path], tuple) and len(got[path]) == len(captured["want"]) == 2
    np.testing.assert_allclose(got[path][0], captured["want"][0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got[path][1], 2 * captured["want"][1], atol=2e-5, rtol=0)


@pytest.mark.parametrize("pair", ["clip"], indirect=True)
def test_another_method_runs_with_its_hooks(pair):
    _, hf, ours, batch = pair
    path = "vision_model.encoder.layers.1"
    pixels = batch["pixel_values"]
    want = {}
    hook = hf.get_submodule(path).register_forward_hook(
        lambda module, args, output: want.update(value=first(output).numpy())
    )
    try:
        with torch.no_grad():
            hf.get_image_features(pixel_values=torch.as_tensor(pixels))
    finally:
        hook.remove()
    _, got = interp.run(ours, pixels, capture=(path,), method="get_image_features")
    np.testing.assert_allclose(got[path], want["value"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("pair", ["tapas"], indirect=True)
def test_a_module_of_another_split_is_refused_with_its_parts(pair):
    ours = pair[2]
    # TapasAttention is self-attention, projection and the post-LN residual: no one module of
    # ours; its output is that of attention.output.LayerNorm, which the error lists.
    with pytest.raises(interp.ModulePathError) as error:
        interp.run(ours, capture=("tapas.encoder.layer.0.attention",), **pair[3])
    assert "tapas.encoder.layer.0.attention.output.LayerNorm" in str(error.value)


@pytest.mark.parametrize("pair", ["vit"], indirect=True)  # the family transformers 5 renamed
def test_transformers_4_module_names_resolve(pair):
    _, hf, ours, batch = pair
    _, want = hf_run(hf, batch, capture=("vit.layers.1.attention",))
    _, got = interp.run(ours, capture=("vit.encoder.layer.1.attention",), **batch)
    np.testing.assert_allclose(
        got["vit.encoder.layer.1.attention"], want["vit.layers.1.attention"], atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("pair", ["wav2vec2"], indirect=True)  # lm_head: read as a kernel
def test_a_module_the_call_does_not_run_is_an_error(pair):
    _, _, ours, batch = pair
    with pytest.raises(ValueError, match="'lm_head' did not run"):
        interp.run(ours, capture=("lm_head",), **batch)


def test_models_configs_and_captures_render_with_treescope(pair):
    model_type, _, ours, batch = pair
    _, captured = interp.run(ours, capture=PATHS[model_type][0][:1], **batch)
    for value in (ours, ours.config):
        assert type(value).__name__ in treescope.render_to_text(value)
    assert PATHS[model_type][0][0] in treescope.render_to_text(captured)


def test_captures_flow_through_remat_and_grad():
    family = pf.models.FAMILIES["gpt2"]
    config = dataclasses.replace(family.config.tiny(), remat="full")
    model = family.build(config, rngs=nnx.Rngs(0))
    ids = jnp.arange(18).reshape(2, 9) % config.vocab_size
    hidden = model(ids, output_hidden_states=True).hidden_states

    def loss(m):
        _, got = interp.run(m, ids, capture=("transformer.h.1",))
        return jnp.sum(got["transformer.h.1"] ** 2), got["transformer.h.1"]

    grads, got = nnx.grad(loss, has_aux=True)(model)
    np.testing.assert_allclose(got, hidden[2], atol=1e-6, rtol=0)
    # the stream after block 1 does not depend on block 2, and does on block 0
    assert not np.any(grads.h[2].mlp.c_fc.kernel[...])
    assert np.any(grads.h[0].mlp.c_fc.kernel[...])


def test_scanned_layers_are_refused_naming_scan_layers():
    family = pf.models.FAMILIES["gpt2"]
    model = family.build(family.config.tiny(scan_layers=True), rngs=nnx.Rngs(0))
    with pytest.raises(interp.ModulePathError, match="scan_layers=False"):
        interp.run(model, jnp.ones((1, 3), int), capture=("transformer.h.1.attn",))
