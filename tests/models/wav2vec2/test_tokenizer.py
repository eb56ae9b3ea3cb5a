"""Wav2Vec2CTCTokenizer against transformers' on random CTC frame ids and facebook's vocab."""

import json

import numpy as np
import pytest
import transformers

from polyformer.models.wav2vec2.tokenizer import Wav2Vec2CTCTokenizer, offsets_in_seconds

# facebook/wav2vec2-base-960h's vocab.json.
VOCAB = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "E": 5, "T": 6, "A": 7, "O": 8,
         "N": 9, "I": 10, "H": 11, "S": 12, "R": 13, "D": 14, "L": 15, "U": 16, "M": 17, "W": 18,
         "C": 19, "F": 20, "G": 21, "Y": 22, "P": 23, "B": 24, "V": 25, "K": 26, "'": 27, "X": 28,
         "J": 29, "Q": 30, "Z": 31}  # fmt: skip
SECONDS_PER_FRAME = 320 / 16000


@pytest.fixture(scope="module", params=[False, True], ids=["upper", "do_lower_case"])
def tokenizers(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp("vocab")
    (directory / "vocab.json").write_text(json.dumps(VOCAB))
    lower = request.param
    theirs = transformers.Wav2Vec2CTCTokenizer(directory / "vocab.json", do_lower_case=lower)
    theirs.save_pretrained(directory)
    return Wav2Vec2CTCTokenizer.from_pretrained(directory), theirs


def frame_ids(rng, count, length):
    """CTC-like frame ids: runs of blanks, delimiters and letters, some special and out-of-range
    ids, with repeats."""
    weights = np.full(40, 0.5 / 35)
    weights[0], weights[4] = 0.35, 0.15  # blank and delimiter common, ids 32-39 out of range
    ids = rng.choice(40, size=(count, length), p=weights / weights.sum())
    # Each id held for 1 to 3 frames, as a CTC model holds a character.
    return np.repeat(ids, rng.integers(1, 4, size=length), axis=1)


def test_loads_vocab_and_config(tokenizers):
    ours, theirs = tokenizers
    assert dict(ours.vocab) == VOCAB and ours.do_lower_case == theirs.do_lower_case
    assert ours.pad_token_id == 0 and ours.vocab_size == 32


@pytest.mark.parametrize("skip_special_tokens", [False, True])
def test_batch_decode_matches_transformers(tokenizers, skip_special_tokens):
    ours, theirs = tokenizers
    ids = frame_ids(np.random.default_rng(0), 200, 30)
    got = ours.batch_decode(ids, skip_special_tokens=skip_special_tokens)
    want = theirs.batch_decode(ids, skip_special_tokens=skip_special_tokens)
    assert got == want
    if not skip_special_tokens:  # the edge cases were exercised
        assert any("  " in t for t in want) and any("<unk>" in t for t in want)


@pytest.mark.parametrize("text", ["HELLO  WORLD", "AABBA", "LL"])
def test_labels_decode_with_repeats(tokenizers, text):
    ours, theirs = tokenizers
    ids = theirs(text)["input_ids"]
    assert ours.decode(ids, group_tokens=False) == theirs.decode(ids, group_tokens=False)
    assert ours.decode(ids, group_tokens=False) == (text.lower() if ours.do_lower_case else text)


def test_offsets_match_transformers(tokenizers):
    ours, theirs = tokenizers
    for row in frame_ids(np.random.default_rng(1), 100, 40):
        got = ours.decode(row, output_char_offsets=True, output_word_offsets=True)
        want = theirs.decode(row, output_char_offsets=True, output_word_offsets=True)
        assert got.text == want.text
        assert [(c.char, c.start_offset, c.end_offset) for c in got.char_offsets] == [
            (c["char"], c["start_offset"], c["end_offset"]) for c in want.char_offsets
        ]
        assert [(w.word, w.start_offset, w.end_offset) for w in got.word_offsets] == [
            (w["word"], w["start_offset"], w["end_offset"]) for w in want.word_offsets
        ]
        seconds = offsets_in_seconds(got.word_offsets, SECONDS_PER_FRAME)
        for ours_s, hf in zip(seconds, want.word_offsets, strict=True):
            assert ours_s["text"] == hf["word"]
            assert ours_s["timestamp"] == pytest.approx(
                (hf["start_offset"] * SECONDS_PER_FRAME, hf["end_offset"] * SECONDS_PER_FRAME)
            )


def test_decode_logits_is_greedy_and_honours_lengths(tokenizers):
    ours, theirs = tokenizers
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(4, 25, 32)).astype(np.float32)
    lengths = [25, 10, 3, 17]
    want = [theirs.decode(row[:n]) for row, n in zip(logits.argmax(-1), lengths, strict=True)]
    assert ours.decode_logits(logits, lengths) == want
    with pytest.raises(ValueError, match="expected"):
        ours.decode_logits(logits[..., :31])


@pytest.mark.parametrize(
    "text", ["HELLO WORLD", "IT'S A TEST", "  TWO  SPACES ", "X", "", "lower case", "1 2 3 é"]
)
def test_encode_matches_transformers(tokenizers, text):
    ours, theirs = tokenizers
    assert ours.encode(text) == theirs(text)["input_ids"]


def test_encode_batch_pads_with_blank(tokenizers):
    ours, _ = tokenizers
    batch = ours(["AB C", "D"])
    np.testing.assert_array_equal(batch["input_ids"], [[7, 24, 4, 19], [14, 0, 0, 0]])
    np.testing.assert_array_equal(batch["attention_mask"], [[1, 1, 1, 1], [1, 0, 0, 0]])


def test_save_and_load_round_trip_with_transformers(tokenizers, tmp_path):
    ours, theirs = tokenizers
    ours.save_pretrained(tmp_path)
    again = transformers.Wav2Vec2CTCTokenizer.from_pretrained(tmp_path)
    assert again.get_vocab() == theirs.get_vocab() and again.do_lower_case == ours.do_lower_case
    assert Wav2Vec2CTCTokenizer.from_pretrained(tmp_path) == ours


def test_bad_vocab_and_input(tmp_path):
    with pytest.raises(ValueError, match="pad_token"):
        Wav2Vec2CTCTokenizer({"|": 0, "<unk>": 1})
    (tmp_path / "vocab.json").write_text(json.dumps({"en": VOCAB, "fr": VOCAB}))
    with pytest.raises(ValueError, match="target_lang"):
        Wav2Vec2CTCTokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="one sequence"):
        Wav2Vec2CTCTokenizer(VOCAB).decode(np.zeros((2, 3), int))


def test_a_vocab_json_that_is_not_an_object_names_the_file(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps(list(VOCAB)))
    with pytest.raises(ValueError, match=r"vocab\.json holds a list, not a JSON object"):
        Wav2Vec2CTCTokenizer.from_pretrained(tmp_path)
    (tmp_path / "vocab.json").write_text("{")
    with pytest.raises(ValueError, match=r"vocab\.json is not valid JSON"):
        Wav2Vec2CTCTokenizer.from_pretrained(tmp_path)
