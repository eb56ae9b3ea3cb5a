"""Input pipelines and every data config. The contract the trainer reads is `TrainData`
(protocol.py); `LMData` implements it for TFDS text -> tokenizer -> cached token ids -> sharded,
resumable LM batches, `ArrayData` for the small in-memory vision, speech and table sets. The data
configs: `TextData` (lm.py), `DigitImages` and `DigitCaptions` (vision.py), `SpokenDigitsData`
(speech.py), `TableQuestionsData` (tables.py).

corpus = prepare_lm_corpus("python_stdlib", vocab_size=4096)   # built and cached once
train = lm_dataset(corpus.tokens["train"], 256, HostBatches(global_batch=32, seed=0))
batches = batch_iterator(train)          # next(batches)["inputs"]: [32 // hosts, 256]
state = batches.get_state()              # {"next_index": step}; set_state(state) resumes
packed = lm_dataset(..., end_of_text=corpus.end_of_text_id)  # + segment_ids, positions, weights
"""

from polyformer.training.data.arrays import ArrayData, array_dataset
from polyformer.training.data.batches import HostBatches, batch_iterator
from polyformer.training.data.corpus import LMCorpus, prepare_lm_corpus, token_ids
from polyformer.training.data.lm import (
    LMData,
    TextData,
    lm_dataset,
    num_windows,
    pack_documents,
)
from polyformer.training.data.protocol import Batch, DataConfig, TrainData, TrainIterator
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
    "HostBatches",
    "Batch",
    "DataConfig",
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
    "pack_documents",
    "prepare_lm_corpus",
    "save_tokenizer",
    "TextData",
    "TrainData",
    "TrainIterator",
    "texts",
    "token_ids",
    "train_bpe",
]
