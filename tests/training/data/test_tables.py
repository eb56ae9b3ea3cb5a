import dataclasses

import numpy as np
import pandas as pd
import pytest
import transformers

from polyformer.models.tapas.config import TOKEN_TYPES
from polyformer.models.tapas.tokenizer import TapasTokenizer
from polyformer.training.data.tables import BATCH_KEYS, TableQuestionsData, vocabulary
from tests.training.tiny_bert import words


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    return TableQuestionsData(train_tables=2, validation_tables=1, data_dir=data_dir)


def test_questions_are_encoded_row_for_row_with_their_tables(tables):
    encoded, questions = tables.encode("validation")
    assert len(questions) == len(encoded["input_ids"]) > 0
    assert encoded["input_ids"].shape == (len(questions), tables.max_length)
    assert encoded["token_type_ids"].shape == (len(questions), tables.max_length, 7)
    np.testing.assert_array_equal(
        encoded["aggregation_labels"], [q.question.aggregation for q in questions]
    )
    for row, asked in enumerate(questions):
        # Every answer cell is labelled, and nothing outside the table is.
        assert encoded["labels"][row].sum() >= len(asked.question.coordinates)
        assert asked.gold_cells == [asked.cells[r][c] for r, c in asked.question.coordinates]


def test_each_question_is_encoded_on_its_own(tables):
    """The questions are independent, as WikiSQL's are: none carries another question's answer
    cells in prev_labels (SQA's follow-up questions would), so the held-out inputs hold no gold
    answer, and each question encodes as it does when asked alone."""
    encoded, questions = tables.encode("validation")
    prev_labels = TOKEN_TYPES.index("prev_labels")
    assert not encoded["token_type_ids"][..., prev_labels].any()
    tokenizer = tables.tokenizer()
    table = pd.DataFrame(questions[1].cells, columns=tables.tables("validation")[0][0].columns)
    alone = tokenizer(
        table,
        questions[1].question.text,
        answer_coordinates=questions[1].question.coordinates,
        answer_text=questions[1].gold_cells,
        padding="max_length",
        max_length=tables.max_length,
    )
    for key in ("input_ids", "attention_mask", "token_type_ids", "labels"):
        np.testing.assert_array_equal(encoded[key][1], alone[key][0], err_msg=key)


def test_load_gives_the_strongly_supervised_batches(tables, tmp_path):
    data = tables.load()
    assert set(data.train) == set(BATCH_KEYS)
    assert data.model_overrides == {"vocab_size": len(vocabulary()), "max_position_embeddings": 112}
    data.save(tmp_path)
    tokenizer = TapasTokenizer.from_pretrained(tmp_path)
    assert tokenizer.convert_tokens_to_ids(["[PAD]", "what", "setosa"]) == [
        vocabulary()[w] for w in ("[PAD]", "what", "setosa")
    ]


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="data.train_tables"):
        TableQuestionsData(train_tables=0)
    with pytest.raises(ValueError, match="data.train_percent"):
        TableQuestionsData(train_percent=100)


def test_a_bert_vocabulary_gives_transformers_ids_with_empty_added(tables, tmp_path):
    """On a BERT checkpoint's vocab.txt (no [EMPTY]) the inputs are transformers' TapasTokenizer's
    on the same file, [EMPTY] is an added token after the vocabulary, and the model gets a row
    for it."""
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "vocab.txt").write_text("".join(f"{w}\n" for w in words()))
    data = dataclasses.replace(tables, vocabulary=str(tmp_path / "bert"))
    assert data.tokenizer().added_tokens == {"[EMPTY]": len(words())}
    assert data.load().model_overrides["vocab_size"] == len(words()) + 1
    theirs = transformers.TapasTokenizer(str(tmp_path / "bert" / "vocab.txt"))
    encoded, _ = data.encode("validation")
    row = 0
    for table, asked in data.tables("validation"):
        for q in asked:  # each question on its own
            want = theirs(
                table,
                q.text,
                answer_coordinates=q.coordinates,
                answer_text=[table.iat[r, c] for r, c in q.coordinates],
                padding="max_length",
                max_length=data.max_length,
            )
            for key in ("input_ids", "attention_mask", "token_type_ids", "labels"):
                np.testing.assert_array_equal(encoded[key][row], np.asarray(want[key]), err_msg=key)
            row += 1
    data.load().save(tmp_path / "saved")
    assert transformers.TapasTokenizer.from_pretrained(tmp_path / "saved").added_tokens_encoder == {
        "[EMPTY]": len(words())
    }


def test_a_vocabulary_without_vocab_txt_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.vocabulary=.*no vocab.txt"):
        TableQuestionsData(vocabulary=str(tmp_path))
