"""Reading checkpoint directories: config.json and every weights format, and every way the files
can be wrong."""

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from polyformer import checkpoint_io
from polyformer.checkpoint_io import CheckpointError


def test_read_json_names_the_file_when_it_is_missing_invalid_or_not_an_object(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json in"):
        checkpoint_io.read_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        checkpoint_io.read_config(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="config.json holds a list, not a JSON object"):
        checkpoint_io.read_config(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text('{"size": 3}')
    assert checkpoint_io.read_json(tmp_path, "preprocessor_config.json") == {"size": 3}


def test_weights_are_read_from_the_first_format_present(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "pytorch_model.bin")
    tensors, source = checkpoint_io.read_weights(tmp_path)
    assert source.endswith("pytorch_model.bin") and np.array_equal(tensors["w"], np.ones(2))
    save_file({"w": np.zeros(2, np.float32)}, tmp_path / "model.safetensors")
    tensors, source = checkpoint_io.read_weights(tmp_path)
    assert source.endswith("model.safetensors") and np.array_equal(tensors["w"], np.zeros(2))


def test_bfloat16_torch_tensors_widen_to_float32_exactly(tmp_path):
    values = torch.tensor([1.5, -2.25, 3.0], dtype=torch.bfloat16)
    torch.save({"w": values}, tmp_path / "pytorch_model.bin")
    tensors, _ = checkpoint_io.read_weights(tmp_path)
    assert tensors["w"].dtype == np.float32 and list(np.asarray(tensors["w"])) == [1.5, -2.25, 3.0]


@pytest.mark.parametrize("torch_format", [False, True])
def test_sharded_checkpoints_merge_every_shard(tmp_path, torch_format):
    suffix = ".bin" if torch_format else ".safetensors"
    shards = {"a-1" + suffix: {"x": np.ones(2, np.float32)}, "a-2" + suffix: {"y": np.zeros(3)}}
    for name, tensors in shards.items():
        if torch_format:
            torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, tmp_path / name)
        else:
            save_file(tensors, tmp_path / name)
    weight_map = {k: name for name, tensors in shards.items() for k in tensors}
    index = ("pytorch_model.bin" if torch_format else "model.safetensors") + ".index.json"
    (tmp_path / index).write_text(json.dumps({"weight_map": weight_map}))
    tensors, source = checkpoint_io.read_weights(tmp_path)
    assert source.endswith(index) and sorted(tensors) == ["x", "y"]
    assert np.array_equal(tensors["x"], np.ones(2)) and tensors["y"].shape == (3,)


@pytest.mark.parametrize(
    "index, message",
    [
        ("{}", "is not a shard index"),
        ('{"weight_map": ["a.safetensors"]}', "weight_map must map tensor names"),
        ('{"weight_map": {"x": 3}}', "weight_map must map tensor names"),
    ],
)
def test_a_bad_shard_index_is_refused(tmp_path, index, message):
    (tmp_path / "model.safetensors.index.json").write_text(index)
    with pytest.raises(CheckpointError, match=message):
        checkpoint_io.read_weights(tmp_path)


def test_a_state_dict_of_other_objects_is_refused(tmp_path):
    torch.save({"w": [1, 2]}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="not a state dict"):
        checkpoint_io.read_weights(tmp_path)


def test_no_weights_says_what_was_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match="looked for model.safetensors, "):
        checkpoint_io.read_weights(tmp_path)
