"""CLIPTokenizer against transformers' CLIPTokenizer (the `tokenizers`-backed one) on a CLIP-format
BPE trained here: OpenAI's vocabulary cannot be downloaded, its format and pipeline are the same."""

import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import transformers

from polyformer.models.clip.tokenizer import CLIPTokenizer

TEXTS = [
    "a photo of a cat",
    "A Photo Of A CAT.",
    "  leading, trailing   and\tinner \n\n whitespace  ",
    "Ünïcödé: naïve café, Straße, 東京, Ελληνικά, русский, עברית, العربية",
    "e\u0301 composed by NFC, ﬁ ligature, Ｆｕｌｌｗｉｄｔｈ",
    "emoji 😀👍🏽 🇫🇷 👨‍👩‍👧 and symbols ∑∫√∞ ≠ ≤",
    "isn't it? I'm sure they'll've done it, y'all. IT'S LOUD",
    "numbers 3.14159 1,000,000 0x1F 2024-01-01",
    "punctuation!!! ... ?!? (brackets) [and] {braces} \"quotes\" 'single' --- ___",
    "two texts<|endoftext|>joined <|startoftext|>by special tokens",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "",
]
LONG = " ".join(f"word{i} and, more" for i in range(60))  # well over 77 tokens


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    """vocab.json + merges.txt of a 1200-token CLIP BPE trained on Python's json package."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"], "json").glob("*.py"))
    texts = [file.read_text(encoding="utf-8") for file in files] + TEXTS[:3]
    path = tmp_path_factory.mktemp("clip-bpe")
    CLIPTokenizer.train(texts, vocab_size=1200).tokenizer.model.save(str(path))
    return path


@pytest.fixture(scope="module")
def hf_tokenizer(vocab_dir):
    # transformers 5 ignores CLIPTokenizer(vocab_file=, merges_file=) (an empty vocabulary
    # results); from_pretrained reads the two files.
    tokenizer = transformers.CLIPTokenizer.from_pretrained(vocab_dir)
    assert len(tokenizer) == 1200
    return tokenizer


def test_trained_vocabulary_has_openais_layout(vocab_dir):
    vocab = json.loads((vocab_dir / "vocab.json").read_text())
    assert len(vocab) == 1200 and sorted(vocab.values()) == list(range(1200))
    assert vocab["!"] == 0 and vocab["!</w>"] == 256 and vocab["Ā</w>"] == 256 + 188
    assert vocab["<|startoftext|>"] == 1198 and vocab["<|endoftext|>"] == 1199
    merges = (vocab_dir / "merges.txt").read_text().splitlines()
    assert merges[0].startswith("#version") and len(merges) - 1 >= 1200 - 514


def test_same_ids_and_text_as_transformers(vocab_dir, hf_tokenizer, tmp_path):
    hf_tokenizer.save_pretrained(tmp_path)  # writes tokenizer.json
    assert (tmp_path / "tokenizer.json").is_file()
    for ours in (CLIPTokenizer.from_pretrained(vocab_dir), CLIPTokenizer.from_pretrained(tmp_path)):
        assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (1198, 1199, 1199)
        for text in [*TEXTS, LONG]:
            ids = hf_tokenizer(text)["input_ids"]
            assert ours.encode(text) == ids, text
            assert ours.decode(ids) == hf_tokenizer.decode(ids), text
            assert ours.decode(ids, skip_special_tokens=True) == hf_tokenizer.decode(
                ids, skip_special_tokens=True
            ), text
    assert (
        CLIPTokenizer.from_pretrained(vocab_dir).decode(
            CLIPTokenizer.from_pretrained(vocab_dir).encode("A  Photo of a CAT"),
            skip_special_tokens=True,
        )
        == "a photo of a cat"
    )


@pytest.mark.parametrize("padding", [True, "max_length"])
def test_batches_pad_and_truncate_as_transformers(vocab_dir, hf_tokenizer, padding):
    ours = CLIPTokenizer.from_pretrained(vocab_dir)
    texts = [*TEXTS, LONG]
    batch = ours(texts, padding=padding, truncation=True)
    theirs = hf_tokenizer(
        texts, padding=padding, truncation=True, max_length=77, return_tensors="np"
    )
    assert batch["input_ids"].shape == (len(texts), 77)
    for key in ("input_ids", "attention_mask"):
        assert batch[key].dtype == np.int32
        np.testing.assert_array_equal(batch[key], theirs[key])
    assert batch["input_ids"][-1, -1] == ours.eos_token_id
    short = ours(["a cat", "a photo of a dog"])
    np.testing.assert_array_equal(
        short["input_ids"], hf_tokenizer(["a cat", "a photo of a dog"], padding=True)["input_ids"]
    )


def test_save_pretrained_is_read_by_transformers(vocab_dir, tmp_path):
    ours = CLIPTokenizer.from_pretrained(vocab_dir)
    ours.save_pretrained(tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert theirs.model_max_length == 77 and theirs.pad_token_id == ours.pad_token_id
    np.testing.assert_array_equal(
        ours(TEXTS, truncation=True)["input_ids"],
        theirs(TEXTS, padding=True, truncation=True, return_tensors="np")["input_ids"],
    )
    assert CLIPTokenizer.from_pretrained(tmp_path).encode(LONG) == ours.encode(LONG)


def test_rejects_overlong_texts_and_bad_arguments(vocab_dir, tmp_path):
    tokenizer = CLIPTokenizer.from_pretrained(vocab_dir)
    with pytest.raises(ValueError, match=r"text 1 is \d+ tokens long, more than max_length 77"):
        tokenizer(["a cat", LONG])
    assert tokenizer([LONG], truncation=True, max_length=10)["input_ids"].shape == (1, 10)
    with pytest.raises(ValueError, match="padding must be"):
        tokenizer(["a cat"], padding="right")
    with pytest.raises(ValueError, match="different lengths need padding"):
        tokenizer(["a cat", "a photo of a dog"], padding=False)
    with pytest.raises(ValueError, match="at least one text"):
        tokenizer([])
    with pytest.raises(FileNotFoundError, match="no tokenizer in"):
        CLIPTokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="at least 514"):
        CLIPTokenizer.train(["a cat"], vocab_size=300)
