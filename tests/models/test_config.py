"""The config base: config.json <-> frozen dataclass, derived from what each config declares."""

import dataclasses
from typing import ClassVar

import pytest

from polyformer import attention as A
from polyformer.models import FAMILIES
from polyformer.models.config import ConfigError, HFConfig, ModelConfig


@dataclasses.dataclass(frozen=True)
class Tower(HFConfig):
    model_type: ClassVar[str] = "tower"
    TUPLES: ClassVar[tuple[str, ...]] = ("sizes",)

    width: int = 4
    sizes: tuple[int, ...] = (1, 2)


@dataclasses.dataclass(frozen=True)
class Toy(ModelConfig):
    model_type: ClassVar[str] = "toy"
    ARCHITECTURES: ClassVar[tuple[str, ...]] = ("ToyForThing", "ToyModel")
    ARCHITECTURE_ALIASES: ClassVar[dict[str, str]] = {"ToyBare": "ToyModel"}
    ATTENTION_DROPOUT: ClassVar[str] = "attention_dropout"
    RENAMED: ClassVar[dict[str, str]] = {"old_layers": "layers"}
    UNSUPPORTED: ClassVar[dict[str, str]] = {"is_decoder": "decoders"}
    NESTED: ClassVar[dict[str, type]] = {"tower": Tower}
    POSITIVE: ClassVar[tuple[str, ...]] = ("layers",)

    layers: int = 2
    attention_dropout: float = 0.25
    eps: float = 1e-5
    name: str | None = None
    tower: Tower = Tower()


def test_round_trip_with_tuples_nested_configs_and_our_fields_left_out():
    toy = Toy(layers=3, tower=Tower(sizes=(5,)), architectures=("ToyModel",))
    hf = toy.to_hf()
    assert hf["tower"] == {"model_type": "tower", "width": 4, "sizes": [5]}
    assert hf["architectures"] == ["ToyModel"] and hf["dtype"] == "float32"
    assert "attention" not in hf and "param_dtype" not in hf and hf["model_type"] == "toy"
    assert Toy.from_hf({**hf, "transformers_version": "5.0"}) == toy


def test_architectures_pick_the_first_class_of_ours_and_default_to_the_first():
    assert Toy.from_hf({}).architecture == "ToyForThing"
    assert Toy.from_hf({"architectures": ["Other", "ToyModel"]}).architectures == ("ToyModel",)
    assert Toy.from_hf({"architectures": ["ToyBare"]}).architecture == "ToyModel"
    with pytest.raises(ValueError, match="names no class this port has; only ToyForThing or"):
        Toy.from_hf({"architectures": ["Other"]})
    with pytest.raises(ValueError, match="is not supported; expected one of"):
        Toy(architectures=("ToyModel", "ToyForThing"))


def test_renamed_keys_unsupported_keys_and_positive_fields():
    assert Toy.from_hf({"old_layers": 5}).layers == 5
    assert Toy.from_hf({"old_layers": 5, "layers": 6}).layers == 6
    with pytest.raises(ValueError, match="config.json sets is_decoder: decoders are not"):
        Toy.from_hf({"is_decoder": True})
    with pytest.raises(ValueError, match="layers must be positive, got 0"):
        Toy(layers=0)


@pytest.mark.parametrize(
    "hf, message",
    [
        ({"layers": "2"}, "config.json: layers must be one int, got '2'"),
        ({"layers": None}, "config.json: layers must be one int, got None"),
        ({"layers": True}, "layers must be one int"),
        ({"old_layers": 2.5}, "config.json: old_layers must be one int"),
        ({"eps": "small"}, "eps must be a number"),
        ({"name": 3}, "name must be a string or null"),
        ({"tower": {"sizes": [1, "2"]}}, "sizes must be a list of ints"),
        ({"tower": [1]}, "tower must be a JSON object"),
        ({"architectures": "ToyModel"}, "architectures must be a list of strings"),
    ],
)
def test_values_of_the_wrong_type_name_the_field(hf, message):
    with pytest.raises(ConfigError, match=message):
        Toy.from_hf(hf)


def test_ints_are_numbers_and_null_is_kept_where_allowed():
    toy = Toy.from_hf({"eps": 1, "name": None})
    assert toy.eps == 1 and toy.name is None


def test_kernel_is_dense_with_the_configs_dropout_unless_one_is_given():
    assert Toy().kernel == A.Dense(dropout_rate=0.25)
    favor = A.Favor(num_features=8)
    assert Toy(attention=favor).kernel is favor
    with pytest.raises(ValueError, match="attention must be a kernel"):
        Toy(attention="favor")


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_every_familys_tiny_config_round_trips(model_type):
    config = FAMILIES[model_type].config.tiny()
    assert isinstance(config, ModelConfig)
    assert type(config).from_hf(config.to_hf()) == config
    assert len(config.architectures) == 1 and config.architecture in config.ARCHITECTURES
