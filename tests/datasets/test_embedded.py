import hashlib

from polyformer.datasets.embedded import split_of


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
