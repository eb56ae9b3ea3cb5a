"""A run that starts from a BERT checkpoint: the trainer's first parameters are BERT's, the data's
tokenizer reads BERT's vocab.txt with [EMPTY] added, and the run trains."""

import numpy as np
import pytest

from polyformer.models.gpt import GPT2Config
from polyformer.training import trainer
from polyformer.training.config import RunConfig
from polyformer.training.initializers import FromBert
from tests.training.tiny_bert import run_config, save_tiny_bert, words


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-bert")
    return save_tiny_bert(directory), directory


def test_a_run_starts_from_the_bert_weights_and_trains(bert, tmp_path_factory):
    model, directory = bert
    data_dir, out_dir = (str(tmp_path_factory.mktemp(name)) for name in ("tfds", "run"))
    run = run_config(directory, data_dir, out_dir, steps=2, tables=2)
    job = trainer.Trainer(run, run.data.load())
    assert job.model_config.vocab_size == len(words()) + 1  # [EMPTY] after BERT's words
    params = job.initial_state()[0].params["tapas"]
    table = np.asarray(params["embeddings"]["word_embeddings"]["embedding"][...])
    bert_table = model.embeddings.word_embeddings.weight.detach().numpy()
    np.testing.assert_array_equal(table[: len(words())], bert_table)
    query = params["encoder"]["layer"][1]["self_attn"]["query"]["kernel"][...]
    bert_query = model.encoder.layer[1].attention.self.query.weight.detach().numpy()
    np.testing.assert_array_equal(np.asarray(query), bert_query.T)
    result = job.run(progress=False)
    assert result.final_step == 2 and np.isfinite(result.train_loss)


def test_from_bert_starts_tapas_models_only(bert, tmp_path):
    _, directory = bert
    with pytest.raises(ValueError, match="FromBert starts TAPAS models; the run's model is a GPT2"):
        FromBert(str(directory)).load(GPT2Config.tiny())
    with pytest.raises(FileNotFoundError, match="no config.json"):
        FromBert(str(tmp_path))


def test_model_init_must_be_a_model_init():
    with pytest.raises(ValueError, match="model_init must be None or a model init"):
        RunConfig(model_init="bert-base-uncased/")
