import hashlib

from polyformer.datasets.embedded import config_name, named_config, split_of
from polyformer.datasets.table_questions import TableQuestionsConfig


def test_split_is_a_stable_hash_of_the_key():
    keys = [f"example {i}" for i in range(1000)]
    held = [k for k in keys if split_of(k, 10) == "validation"]
    assert 60 < len(held) < 140  # about 10%
    # Pinned by sha256, not by Python's salted hash(): the same split on every machine.
    bucket = int.from_bytes(hashlib.sha256(b"os.py").digest()[:8], "big") % 100
    assert split_of("os.py", bucket + 1) == "validation" and split_of("os.py", bucket) == "train"


def test_zero_and_hundred_percent():
    assert {split_of(str(i), 0) for i in range(100)} == {"train"}
    assert {split_of(str(i), 100) for i in range(100)} == {"validation"}


def test_named_config_takes_its_own_fields_and_names_them_by_their_values():
    values = {"train_tables": 5, "validation_tables": 2, "seed": 3, "train_percent": 60, "x": 1}
    config = named_config(TableQuestionsConfig, "t5", values)
    assert (config.train_tables, config.validation_tables, config.seed) == (5, 2, 3)
    assert config.train_percent == 60
    assert config.name == config_name("t5", (5, 2, 3, 60))
