"""A small TAPAS trained from scratch on questions about generated iris and wine tables, about an
hour on 2 CPU cores; run by experiments/table_qa.py (which also scores answer accuracy on the
held-out tables), or on its own:

polyformer train experiments/configs/table_qa.py
python -m experiments.table_qa --config experiments/configs/table_qa.py [--quick]

experiments/configs/table_qa_minilm.py is the same task from pretrained BERT weights.

Data: `TableQuestionsData` (polyformer/training/data/tables.py): the embedded `table_questions`
TFDS set, 1000 training tables per source (about 9,800 questions) and 40 held-out tables per
source built from rows no training table uses. The exported model (runs/table_qa/model) is a
TapasForQuestionAnswering checkpoint with its vocab.txt:
`polyformer table-qa runs/table_qa/model TABLE.csv "how many rows are setosa?"`.
"""

from polyformer.models.tapas import TapasConfig
from polyformer.training.config import RunConfig
from polyformer.training.data.tables import TableQuestionsData
from polyformer.training.optim import OptimizerConfig


def config() -> RunConfig:
    # vocab_size and max_position_embeddings are set by the data.
    model = TapasConfig.base_wikisql_supervised(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        # About 10,000 generated questions for a few epochs: no dropout.
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return RunConfig(
        model=model,
        data=TableQuestionsData(train_tables=1000, validation_tables=40, max_length=112),
        objective="tapas",
        optimizer=OptimizerConfig(
            learning_rate=2e-3, warmup_steps=200, weight_decay=0.01, b2=0.999
        ),
        steps=4000,
        batch_size=32,
        eval_every=500,
        eval_batches=10,
        checkpoint_every=1000,
        log_every=10,
        out_dir="runs/table_qa",
    )
