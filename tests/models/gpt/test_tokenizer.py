"""GPT2Tokenizer against transformers' GPT2TokenizerFast on a byte-level BPE trained here."""

import glob
import os
import sysconfig

import numpy as np
import pytest
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from polyformer.models.gpt import GPT2Tokenizer

TEXTS = [
    "Hello world",
    " Hello world",
    "def __init__(self, *args, **kwargs):\n        return None\n\n\n",
    "tabs\tand   runs of     spaces  \t \n  trailing   ",
    "Ünïcödé: naïve café, Straße, 東京, Ελληνικά, русский, עברית, العربية",
    "emoji 😀👍🏽 🇫🇷 👨‍👩‍👧 and symbols ∑∫√∞ ≠ ≤",
    "pneumonoultramicroscopicsilicovolcanoconiosis" * 3,
    "isn't it? I'm sure they'll've done it, y'all.",
    "numbers 3.14159 1,000,000 0x1F 2024-01-01",
    "two texts<|endoftext|>joined by the special token",
    "\r\n\r\nwindows newlines\r\n",
    "",
]


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    """vocab.json + merges.txt of a 1000-token byte-level BPE trained on Python's json package."""
    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "json", "*.py")))
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train(files, trainer)
    path = tmp_path_factory.mktemp("bpe")
    bpe.model.save(str(path))
    return path


@pytest.fixture(scope="module")
def hf_tokenizer(vocab_dir):
    # transformers 5 ignores GPT2TokenizerFast(vocab_file, merges_file) (an empty vocabulary
    # results); from_pretrained reads the two files.
    return transformers.GPT2TokenizerFast.from_pretrained(vocab_dir)


def test_same_ids_and_text_as_transformers(vocab_dir, hf_tokenizer, tmp_path):
    hf_tokenizer.save_pretrained(tmp_path)  # writes tokenizer.json
    assert (tmp_path / "tokenizer.json").is_file()
    for ours in (GPT2Tokenizer.from_pretrained(vocab_dir), GPT2Tokenizer.from_pretrained(tmp_path)):
        assert ours.eos_token_id == hf_tokenizer.eos_token_id == 0
        for text in TEXTS:
            ids = ours.encode(text)
            assert ids == hf_tokenizer(text)["input_ids"], text
            assert ours.decode(ids) == hf_tokenizer.decode(ids) == text
            assert ours.decode(ids, skip_special_tokens=True) == hf_tokenizer.decode(
                ids, skip_special_tokens=True
            )


def test_batches_are_left_padded(vocab_dir):
    tokenizer = GPT2Tokenizer.from_pretrained(vocab_dir)
    batch = tokenizer(["a longer first text", "short"], pad_token_id=7)
    short = tokenizer.encode("short")
    width = len(tokenizer.encode("a longer first text"))
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, width)
    np.testing.assert_array_equal(batch["input_ids"][1, width - len(short) :], short)
    assert (batch["input_ids"][1, : width - len(short)] == 7).all()
    assert batch["attention_mask"][1].tolist() == [0] * (width - len(short)) + [1] * len(short)
    assert tokenizer.batch_decode(batch["input_ids"][:1]) == ["a longer first text"]


def test_a_directory_without_a_tokenizer(tmp_path):
    with pytest.raises(FileNotFoundError, match="looked for tokenizer.json, or vocab.json"):
        GPT2Tokenizer.from_pretrained(tmp_path)
