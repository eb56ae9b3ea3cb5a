"""Input pipelines: TFDS text -> tokenizer -> cached token ids -> sharded, resumable LM batches;
in-memory arrays (ArrayData) for the small vision, speech and table sets.

corpus = prepare_lm_corpus("python_stdlib", vocab_size=4096)   # built and cached once
train = lm_dataset(corpus.tokens["train"], seq_len=256, global_batch=32, seed=0)
batches = batch_iterator(train)          # next(batches)["inputs"]: [32 // hosts, 256]
state = batches.get_state()              # {"next_index": step}; set_state(state) resumes
"""

from polyformer.training.data.arrays import ArrayData, array_dataset
from polyformer.training.data.corpus import LMCorpus, prepare_lm_corpus, token_ids
from polyformer.training.data.lm import LMData, batch_iterator, lm_dataset, num_windows
from polyformer.training.data.sources import data_source, texts
from polyformer.training.data.tokenizer import (
    END_OF_TEXT,
    byte_tokenizer,
    end_of_text_id,
    load_tokenizer,
    save_tokenizer,
    train_bpe,
)

__all__ = [
    "END_OF_TEXT",
    "ArrayData",
    "LMCorpus",
    "LMData",
    "array_dataset",
    "batch_iterator",
    "byte_tokenizer",
    "data_source",
    "end_of_text_id",
    "lm_dataset",
    "load_tokenizer",
    "num_windows",
    "prepare_lm_corpus",
    "save_tokenizer",
    "texts",
    "token_ids",
    "train_bpe",
]
