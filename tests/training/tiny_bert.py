"""A tiny random BERT checkpoint as transformers saves it, with a BERT-style vocab.txt of the
table-questions words (no [EMPTY]): what a run that starts from `FromBert` is tested on without
the real checkpoint."""

from pathlib import Path

import torch
import transformers

from polyformer.models.tapas import TapasConfig
from polyformer.training.config import RunConfig
from polyformer.training.data.tables import TableQuestionsData, vocabulary
from polyformer.training.initializers import FromBert

ENCODER = dict(hidden_size=36, num_hidden_layers=2, num_attention_heads=3, intermediate_size=53)
POSITIONS = 128  # the table questions' word-level inputs need 112


def words() -> list[str]:
    return [w for w in vocabulary() if w != "[EMPTY]"]


def save_tiny_bert(directory: Path) -> transformers.BertModel:
    """Writes config.json, model.safetensors and vocab.txt into `directory`."""
    torch.manual_seed(2)
    config = transformers.BertConfig(
        vocab_size=len(words()), max_position_embeddings=POSITIONS, **ENCODER
    )
    model = transformers.BertModel(config).eval()
    model.save_pretrained(directory)
    (directory / "vocab.txt").write_text("".join(f"{w}\n" for w in words()), encoding="utf-8")
    return model


def run_config(bert: Path, data_dir: str, out_dir: str, *, steps: int, tables: int) -> RunConfig:
    """WikiSQL-supervised TAPAS with the tiny BERT's encoder (dropout off), starting from `bert`,
    on `tables` training tables per source tokenized with its vocab.txt."""
    model = TapasConfig.base_wikisql_supervised(
        **ENCODER, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    data = TableQuestionsData(
        train_tables=tables, validation_tables=1, data_dir=data_dir, vocabulary=str(bert)
    )
    return RunConfig(
        model=model,
        model_init=FromBert(str(bert)),
        data=data,
        objective="tapas",
        steps=steps,
        batch_size=4,
        eval_every=steps,
        eval_batches=1,
        checkpoint_every=steps,
        log_every=1,
        out_dir=out_dir,
    )
