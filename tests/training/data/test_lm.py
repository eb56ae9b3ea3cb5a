import json

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from polyformer.datasets import StdlibConfig
from polyformer.models.gpt.tokenizer import GPT2Tokenizer
from polyformer.training.data import (
    END_OF_TEXT,
    HostBatches,
    LMData,
    TextData,
    batch_iterator,
    byte_tokenizer,
    data_source,
    end_of_text_id,
    lm_dataset,
    num_windows,
    pack_documents,
    prepare_lm_corpus,
    save_tokenizer,
    texts,
    train_bpe,
)

TINY = StdlibConfig(name="tiny", max_files=40, validation_percent=20)
SAMPLE = 'def f(x):\n\t"""Ünïcode, tabs\tand  spaces."""\r\n    return x ** 2  # 🐍\n\n'


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def corpus(data_dir):
    return prepare_lm_corpus("python_stdlib", vocab_size=512, data_dir=data_dir, config=TINY)


@pytest.fixture(scope="module")
def train_texts(data_dir):
    return list(texts(data_source("python_stdlib", "train", data_dir, config=TINY)))


def test_bpe_round_trips_and_ends_documents_with_its_own_token(corpus, train_texts):
    tokenizer = corpus.tokenizer
    assert tokenizer.get_vocab_size() == 512
    eot = end_of_text_id(tokenizer)
    for text in [SAMPLE, *train_texts[:5]]:
        assert tokenizer.decode(tokenizer.encode(text).ids) == text
    assert tokenizer.encode(f"a{END_OF_TEXT}b").ids[1] == eot
    assert tokenizer.decode([eot], skip_special_tokens=True) == ""


def test_bpe_training_is_deterministic(corpus, train_texts):
    assert train_bpe(train_texts, 512).to_str() == corpus.tokenizer.to_str()


def test_byte_tokenizer_ids_are_the_bytes():
    tokenizer = byte_tokenizer()
    ids = tokenizer.encode(SAMPLE + END_OF_TEXT).ids
    assert ids == [*SAMPLE.encode(), 256]
    assert tokenizer.decode(ids[:-1]) == SAMPLE


def test_gpt2_tokenizer_loads_the_saved_vocab_and_merges(corpus, tmp_path):
    save_tokenizer(corpus.tokenizer, tmp_path)
    gpt2 = GPT2Tokenizer.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    assert gpt2.encode(SAMPLE + END_OF_TEXT) == corpus.tokenizer.encode(SAMPLE + END_OF_TEXT).ids
    assert gpt2.eos_token_id == corpus.end_of_text_id


def test_token_ids_are_the_documents_joined_by_end_of_text(corpus, train_texts):
    tokenizer, eot = corpus.tokenizer, corpus.end_of_text_id
    want = [i for text in train_texts for i in [*tokenizer.encode(text).ids, eot]]
    np.testing.assert_array_equal(corpus.tokens["train"], want)


def test_a_second_prepare_reads_the_cache(corpus, data_dir):
    again = prepare_lm_corpus("python_stdlib", vocab_size=512, data_dir=data_dir, config=TINY)
    assert again.tokens["train"].filename == corpus.tokens["train"].filename
    assert again.tokenizer.to_str() == corpus.tokenizer.to_str()


def dataset(tokens, end_of_text=None, **kwargs):
    args = dict(global_batch=8, seed=0, process_index=0, process_count=1)
    return lm_dataset(tokens, 16, HostBatches(**(args | kwargs)), end_of_text)


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_windows_overlap_by_one_and_cover_the_tokens():
    tokens = np.arange(1 + 16 * 10, dtype=np.uint16)
    batches = list(dataset(tokens, global_batch=5, seed=None, num_epochs=1))
    inputs = np.concatenate([b["inputs"] for b in batches])
    targets = np.concatenate([b["targets"] for b in batches])
    assert inputs.shape == (num_windows(len(tokens), 16), 16) and inputs.dtype == np.int32
    np.testing.assert_array_equal(inputs.ravel(), tokens[:-1])
    np.testing.assert_array_equal(targets.ravel(), tokens[1:])


def test_iteration_is_deterministic_given_the_seed(corpus):
    tokens = corpus.tokens["train"]
    first = take(batch_iterator(dataset(tokens)), 6)
    again = take(batch_iterator(dataset(tokens)), 6)
    other = take(batch_iterator(dataset(tokens, seed=1)), 6)
    for a, b, c in zip(first, again, other, strict=True):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
        assert not np.array_equal(a["inputs"], c["inputs"])


def test_epochs_are_shuffled_differently_and_each_sees_every_window():
    tokens = np.arange(1 + 16 * 8, dtype=np.uint16)  # 8 windows: one batch an epoch.
    epochs = [b["inputs"][:, 0] // 16 for b in dataset(tokens, num_epochs=3)]
    assert all(sorted(epoch) == list(range(8)) for epoch in epochs)
    assert not np.array_equal(epochs[0], epochs[1])


def test_hosts_split_each_global_batch_between_them(corpus):
    tokens = corpus.tokens["train"]
    one = take(batch_iterator(dataset(tokens)), 5)
    hosts = [
        take(batch_iterator(dataset(tokens, process_index=h, process_count=2)), 5) for h in (0, 1)
    ]
    for step, batch in enumerate(one):
        for h in (0, 1):
            assert hosts[h][step]["inputs"].shape == (4, 16)
            # Host h holds the h-th block of rows of the one-host batch.
            np.testing.assert_array_equal(
                hosts[h][step]["inputs"], batch["inputs"][4 * h : 4 * (h + 1)]
            )


def test_finite_epochs_give_every_host_the_same_number_of_whole_batches():
    tokens = np.arange(1 + 16 * 21, dtype=np.uint16)  # 21 windows, 2 epochs: 42 -> 5 batches of 8.
    lengths = [len(dataset(tokens, num_epochs=2, process_index=h, process_count=2)) for h in (0, 1)]
    assert lengths == [5, 5]


def test_restoring_the_iterator_state_gives_the_same_following_batches(corpus):
    ds = dataset(corpus.tokens["train"])
    iterator = batch_iterator(ds)
    take(iterator, 3)
    state = json.loads(json.dumps(iterator.get_state()))  # What a JSON checkpoint holds.
    want = take(iterator, 4)
    restored = batch_iterator(ds)
    restored.set_state(state)
    for a, b in zip(take(restored, 4), want, strict=True):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
    np.testing.assert_array_equal(ds[5]["inputs"], want[2]["inputs"])  # Batch 5 is step 5's.


def test_orbax_saves_and_restores_the_iterator_with_grains_handler(corpus, tmp_path):
    ds = dataset(corpus.tokens["train"])
    iterator = batch_iterator(ds)
    take(iterator, 2)
    with ocp.CheckpointManager(tmp_path, item_names=("data",)) as manager:
        manager.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
        manager.wait_until_finished()
        want = next(iterator)
        fresh = batch_iterator(ds)
        restored = manager.restore(
            2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh))
        )["data"]
    np.testing.assert_array_equal(next(restored)["inputs"], want["inputs"])


def test_lm_data_serves_train_and_eval_batches(corpus):
    data = LMData(corpus, seq_len=16)
    assert data.vocab_size == 512
    batch = next(data.train_iterator(4, seed=0, shard_index=1, shard_count=2))
    assert batch["inputs"].shape == batch["targets"].shape == (4, 16)
    evals = data.eval_batches(4, count=3)
    assert len(evals) == 3 and evals[0]["inputs"].shape == (4, 16)
    np.testing.assert_array_equal(evals[0]["inputs"][0], corpus.tokens["validation"][:16])


def test_packed_segments_and_positions_restart_after_each_end_of_text():
    end = 9
    inputs = np.array([[1, 2, end, 3, end, end, 4, 5], [6, 7, 8, 1, 2, 3, 4, 5]])
    packed = pack_documents(inputs, end)
    np.testing.assert_array_equal(
        packed["segment_ids"], [[0, 0, 0, 1, 1, 2, 3, 3], [0, 0, 0, 0, 0, 0, 0, 0]]
    )
    np.testing.assert_array_equal(
        packed["positions"], [[0, 1, 2, 0, 1, 0, 0, 1], [0, 1, 2, 3, 4, 5, 6, 7]]
    )
    # An end's target is the next document's first token: it does not count.
    np.testing.assert_array_equal(packed["weights"], inputs != end)
    assert packed["weights"].dtype == np.float32 and packed["positions"].dtype == np.int32


def test_packed_rows_hold_every_token_and_no_padding():
    """Documents of 1 to 20 tokens, end to end: an epoch's rows are the corpus itself, whose
    last partial row is dropped, and every row starts its positions at 0."""
    end = 99
    rng = np.random.default_rng(0)
    docs = [[*rng.integers(0, end, n - 1), end] for n in rng.integers(1, 21, 30)]
    tokens = np.concatenate(docs).astype(np.uint16)
    batches = list(dataset(tokens, global_batch=3, seed=None, num_epochs=1, end_of_text=end))
    inputs = np.concatenate([b["inputs"] for b in batches])
    assert len(inputs) == num_windows(len(tokens), 16) // 3 * 3
    np.testing.assert_array_equal(inputs.ravel(), tokens[: inputs.size])
    positions = np.concatenate([b["positions"] for b in batches])
    segments = np.concatenate([b["segment_ids"] for b in batches])
    assert np.all(positions[:, 0] == 0) and np.all(segments[:, 0] == 0)
    for row, (ids, pos, seg) in enumerate(zip(inputs, positions, segments, strict=True)):
        for s in np.unique(seg):
            np.testing.assert_array_equal(pos[seg == s], np.arange(np.sum(seg == s)), f"row {row}")
            # A segment is one document's: only its last token can be an end.
            assert not np.any(ids[seg == s][:-1] == end)


def test_lm_data_packs_train_and_eval_batches(corpus):
    data = LMData(corpus, seq_len=16, pack=True)
    train = next(data.train_iterator(4, seed=0, shard_index=0, shard_count=1))
    evals = data.eval_batches(4, count=1)[0]
    for batch in (train, evals):
        assert set(batch) == {"inputs", "targets", "segment_ids", "positions", "weights"}
        want = pack_documents(batch["inputs"], corpus.end_of_text_id)
        for key, value in want.items():
            np.testing.assert_array_equal(batch[key], value)
    assert data.tokens_per_example == 16


def test_text_data_and_lm_data_refuse_a_pack_that_is_not_a_bool(corpus):
    with pytest.raises(ValueError, match="data.pack must be True or False, got 'yes'"):
        TextData(pack="yes")
    with pytest.raises(ValueError, match="data.pack must be True or False, got 1"):
        LMData(corpus, 16, 1)
