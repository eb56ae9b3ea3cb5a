"""from_pretrained / save_pretrained: formats, overrides and every way a checkpoint can be wrong."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file, save_file

import polyformer as pf
from polyformer import attention as A
from polyformer.checkpoint_io import resolve
from polyformer.hub import CheckpointError, CheckpointMismatchError
from polyformer.models import gpt, vit


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(our tiny GPT-2, the directory save_pretrained wrote it to)."""
    model = gpt.GPT2LMHeadModel(gpt.GPT2Config.tiny(n_layer=2), rngs=nnx.Rngs(0))
    path = tmp_path_factory.mktemp("saved")
    pf.save_pretrained(model, path)
    return model, path


def flat_params(model) -> dict:
    return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def copy_checkpoint(src, dst, tensors=None, config=None):
    """A copy of checkpoint `src` in `dst`, with other tensors or config.json fields if given."""
    dst.mkdir()
    hf_config = {**json.loads((src / "config.json").read_text()), **(config or {})}
    (dst / "config.json").write_text(json.dumps(hf_config))
    if tensors is None:
        tensors = load_file(src / "model.safetensors")
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_save_then_load_gives_the_same_parameters_and_config(saved):
    model, path = saved
    loaded = pf.from_pretrained(path)
    assert loaded.config == model.config
    want, got = flat_params(model), flat_params(loaded)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    assert json.loads((path / "config.json").read_text())["model_type"] == "gpt2"


def test_dtype_and_attention_overrides(saved):
    _, path = saved
    kernel = A.Favor(num_features=32)
    model = pf.from_pretrained(path, dtype=jnp.bfloat16, attention=kernel)
    assert all(block.attn.kernel is kernel for block in model.h)
    out = nnx.jit(lambda m, x: m(x, output_hidden_states=True))(model, jnp.ones((1, 5), int))
    assert out.logits.dtype == jnp.float32
    assert out.hidden_states[1].dtype == jnp.bfloat16
    assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype("float32")}


def test_a_checkpoint_that_does_not_fit_lists_every_problem(saved, tmp_path):
    _, path = saved
    tensors = load_file(path / "model.safetensors")
    del tensors["transformer.h.1.mlp.c_fc.bias"]
    del tensors["transformer.ln_f.weight"]
    tensors["transformer.h.0.attn.c_attn.weight"] = np.zeros((96, 96), np.float32)
    tensors["transformer.h.2.ln_1.weight"] = np.ones(96, np.float32)
    tensors["lm_head.weight"] = np.ones((1031, 96), np.float32)  # differs from the tied wte
    bad = copy_checkpoint(path, tmp_path / "bad", tensors)
    with pytest.raises(CheckpointMismatchError) as error:
        pf.from_pretrained(bad)
    e = error.value
    assert e.missing == ["transformer.h.1.mlp.c_fc.bias", "transformer.ln_f.weight"]
    assert e.wrong_shape == [
        "transformer.h.0.attn.c_attn.weight: checkpoint (96, 96), model (96, 288)"
    ]
    assert e.unexpected[0] == "transformer.h.2.ln_1.weight"
    assert e.unexpected[1].startswith("lm_head.weight (differs from transformer.wte.weight")
    message = str(e)
    assert str(bad / "model.safetensors") in message
    for name in ("h.1.mlp.c_fc.bias", "ln_f.weight", "h.0.attn.c_attn.weight", "h.2.ln_1"):
        assert name in message


def test_unknown_model_type(saved, tmp_path):
    bad = copy_checkpoint(saved[1], tmp_path / "bert", config={"model_type": "bert"})
    with pytest.raises(CheckpointError, match=r"config\.json: model_type 'bert' is not supported"):
        pf.from_pretrained(bad)


def test_missing_files(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json in"):
        pf.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text((saved[1] / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="looked for model.safetensors"):
        pf.from_pretrained(tmp_path)
    index = {"weight_map": {"transformer.wte.weight": "model-00001-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="model-00001-of-00002.safetensors"):
        pf.from_pretrained(tmp_path)


def test_truncated_weights_files(saved, tmp_path):
    model, path = saved
    data = (path / "model.safetensors").read_bytes()
    bad = copy_checkpoint(path, tmp_path / "safetensors")
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors is truncated"):
        pf.from_pretrained(bad)
    (bad / "model.safetensors").unlink()
    torch.save({"x": torch.ones(1000)}, bad / "pytorch_model.bin")
    data = (bad / "pytorch_model.bin").read_bytes()
    (bad / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="pytorch_model.bin is truncated"):
        pf.from_pretrained(bad)


class RunsCode:
    """Unpickling this calls Path.touch(marker): what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (type(self.marker).touch, (self.marker,))


def test_a_pickle_that_would_run_code_is_refused(saved, tmp_path):
    marker = tmp_path / "code-ran"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((saved[1] / "config.json").read_text())
    torch.save(
        {"transformer.wte.weight": torch.zeros(3), "x": RunsCode(marker)}, bad / "pytorch_model.bin"
    )
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        pf.from_pretrained(bad)
    assert not marker.exists()


def test_a_model_holding_numpy_parameters_saves_its_transposes_correctly(tmp_path):
    # A trained model gathered onto the host holds numpy arrays; `.T` of one is a strided view,
    # which safetensors once wrote in its untransposed memory order (ViT's linears transpose).
    model = vit.build(vit.ViTConfig.tiny(), rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    on_host = nnx.merge(graphdef, jax.tree.map(np.asarray, params), rest)
    pf.save_pretrained(on_host, tmp_path)
    want, got = flat_params(model), flat_params(pf.from_pretrained(tmp_path))
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=str(key))


def test_a_hub_id_loads_from_the_hugging_face_cache_offline(saved, hub_cache):
    model, path = saved
    snapshot = hub_cache.add("org/tiny-gpt2", path)
    loaded = pf.from_pretrained("org/tiny-gpt2")
    assert loaded.config == model.config
    want, got = flat_params(model), flat_params(loaded)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    assert resolve("org/tiny-gpt2") == snapshot


def test_a_directory_is_taken_before_a_hub_id(saved, hub_cache, monkeypatch):
    _, path = saved
    monkeypatch.chdir(path.parent)
    assert resolve(path.name) == Path(path.name)
    assert pf.from_pretrained(path.name).config.model_type == "gpt2"


def test_a_hub_id_missing_from_the_cache_names_the_id_and_the_cache(hub_cache):
    with pytest.raises(FileNotFoundError, match="'org/missing'") as error:
        pf.from_pretrained("org/missing")
    assert str(hub_cache.path) in str(error.value)
    assert "HF_HUB_OFFLINE" in str(error.value)
