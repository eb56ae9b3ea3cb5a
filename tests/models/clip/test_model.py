"""CLIP's config, errors, old checkpoint layouts and kernel swap."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file

import polyformer as pf
from polyformer import attention as A
from polyformer.models import clip
from tests.models.clip.reference import OFFICIAL


def test_config_reads_and_writes_config_json_fields():
    config = clip.CLIPConfig.tiny(logit_scale_init_value=1.5)
    hf = config.to_hf()
    assert hf["text_config"]["model_type"] == "clip_text_model" and hf["projection_dim"] == 16
    assert clip.CLIPConfig.from_hf({**hf, "transformers_version": "5.24.0"}) == config
    official = clip.CLIPConfig.from_hf(OFFICIAL)
    assert official == clip.CLIPConfig.clip_vit_base_patch32()
    assert official.text_config.legacy_pooling and not config.text_config.legacy_pooling


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(architectures=["CLIPForImageClassification"]), "only CLIPModel is supported"),
        (dict(text_config=dict(hidden_size=25)), "text_config: hidden_size=25 is not divisible"),
        (dict(vision_config=dict(hidden_act="gelu_newest")), "unknown activation function"),
        (dict(text_config=dict(eos_token_id=[2, 3])), "eos_token_id must be one int"),
        (dict(vision_config=dict(patch_size=300)), "larger than image_size"),
    ],
)
def test_bad_configs_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        clip.CLIPConfig.from_hf({**OFFICIAL, **fields})


def test_old_files_with_position_ids_buffers_load(checkpoint, tmp_path):
    """transformers before 4.31 saved both towers' position_ids; 5.24 does not."""
    hf_model, ours, path = checkpoint
    assert not any("position_ids" in key for key in load_file(path / "model.safetensors"))
    state = hf_model.state_dict()
    state["text_model.embeddings.position_ids"] = torch.arange(13)[None]
    state["vision_model.embeddings.position_ids"] = torch.arange(26)[None]
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    loaded = nnx.state(pf.from_pretrained(tmp_path), nnx.Param)
    for (key, got), (_, want) in zip(nnx.to_flat_state(loaded), nnx.to_flat_state(
            nnx.state(ours, nnx.Param)), strict=True):  # fmt: skip
        np.testing.assert_array_equal(got.get_value(), want.get_value(), err_msg=str(key))


def test_the_kernel_of_both_towers_can_be_swapped_at_load(checkpoint):
    _, _, path = checkpoint
    favor = pf.from_pretrained(path, attention=A.Favor(num_features=32))
    layers = [*favor.text_model.encoder.layers, *favor.vision_model.encoder.layers]
    assert all(isinstance(layer.self_attn.kernel, A.Favor) for layer in layers)


def test_too_long_texts_are_refused(checkpoint):
    with pytest.raises(ValueError, match="14 tokens do not fit: .*max_position_embeddings=13"):
        checkpoint[1].get_text_features(jnp.ones((1, 14), jnp.int32))
