"""TAPAS's legacy checkpoint names, errors, config, bfloat16 and the encoder initialised from
BERT."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file

import polyformer as pf
from polyformer.models import tapas
from polyformer.models.convert import CheckpointMismatchError
from polyformer.models.tapas.tokenizer import TapasTokenizer
from tests.models.tapas.reference import (
    LENGTH,
    TINY,
    WTQ,
    encode,
    inputs,
    ours_forward,
    random_hf_model,
)


def test_legacy_layer_norm_names_load(wtq_checkpoint, tmp_path):
    _, path = wtq_checkpoint
    tensors = load_file(path / "model.safetensors")
    renamed = {
        name.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        ): t
        for name, t in tensors.items()
    }
    assert renamed.keys() != tensors.keys()
    save_file(renamed, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    legacy, modern = pf.from_pretrained(tmp_path), pf.from_pretrained(path)
    for a, b in zip(
        jax.tree.leaves(nnx.state(legacy)), jax.tree.leaves(nnx.state(modern)), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_missing_head_is_reported(tmp_path):
    """A TapasModel checkpoint whose config.json claims the QA head: every head tensor missing."""
    hf_model = random_hf_model(transformers.TapasModel)
    hf_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["architectures"] = ["TapasForQuestionAnswering"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointMismatchError, match="output_weights"):
        pf.from_pretrained(tmp_path)


@pytest.fixture(scope="module")
def bert_checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    config = transformers.BertConfig(
        vocab_size=TINY["vocab_size"], hidden_size=36, num_hidden_layers=2, num_attention_heads=3,
        intermediate_size=53, max_position_embeddings=80,
    )  # fmt: skip
    model = transformers.BertModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("tiny-bert")
    model.save_pretrained(path)
    return model.eval(), path


@pytest.mark.parametrize("head", [None, "TapasForQuestionAnswering"])
def test_from_bert_equals_bert(bert_checkpoint, head):
    bert, path = bert_checkpoint
    config = None if head is None else tapas.TapasConfig.tiny(max_position_embeddings=LENGTH)
    model = tapas.from_bert(path, config)
    encoder = model if head is None else model.tapas
    x = inputs()
    segment_only = np.zeros_like(x["token_type_ids"])
    segment_only[..., 0] = x["token_type_ids"][..., 0]
    with torch.no_grad():
        want = bert(
            input_ids=torch.as_tensor(x["input_ids"]),
            attention_mask=torch.as_tensor(x["attention_mask"]),
            token_type_ids=torch.as_tensor(x["token_type_ids"][..., 0]),
        ).last_hidden_state.numpy()
    got = encode(
        encoder, *(jnp.asarray(a) for a in (x["input_ids"], x["attention_mask"], segment_only))
    )
    real = x["attention_mask"].astype(bool)
    np.testing.assert_allclose(
        np.asarray(got.last_hidden_state)[real], want[real], atol=1e-4, rtol=0
    )
    if head is not None:
        # The QA heads keep the WTQ initialisation: zero cell-selection weights.
        assert not np.any(np.asarray(model.output_weights[...]))


def test_from_bert_tells_table_rows_and_columns_apart_from_the_start(bert_checkpoint):
    """Row 0 of the six table-structure token-type tables (question and padding tokens) is zero,
    which keeps BERT's outputs; their other rows are random and distinct, so fine-tuning starts
    with rows, columns and ranks told apart."""
    _, path = bert_checkpoint
    config = tapas.TapasConfig.tiny(max_position_embeddings=LENGTH)
    tables = list(tapas.from_bert(path, config).tapas.embeddings.token_type_embeddings)
    for size, table in zip(config.type_vocab_sizes[1:], tables[1:], strict=True):
        rows = np.asarray(table.embedding[...])
        assert not rows[0].any()
        assert len(np.unique(rows[1:], axis=0)) == size - 1 and np.abs(rows[1:]).min() > 0


def test_from_bert_grows_the_vocabulary_for_added_tokens(bert_checkpoint):
    """A TapasTokenizer on BERT's vocab.txt numbers [EMPTY] after BERT's words."""
    bert, path = bert_checkpoint
    words = bert.config.vocab_size
    config = tapas.TapasConfig.tiny(vocab_size=words + 1, max_position_embeddings=LENGTH)
    table = np.asarray(tapas.from_bert(path, config).tapas.embeddings.word_embeddings.embedding)
    np.testing.assert_array_equal(
        table[:words], bert.embeddings.word_embeddings.weight.detach().numpy()
    )
    np.testing.assert_allclose(table[words], table[:words].mean(0), atol=1e-8, rtol=0)
    with pytest.raises(ValueError, match=f"vocab_size: config {words - 1}, BERT {words}"):
        tapas.from_bert(path, tapas.TapasConfig.tiny(vocab_size=words - 1))


def test_from_bert_pairs_with_a_tokenizer_on_the_bert_vocabulary(bert_checkpoint, tmp_path):
    """BERT's vocab.txt has no [EMPTY]: the tokenizer adds it as id vocab_size, and the model
    from_bert builds for len(tokenizer) ids embeds it."""
    bert, path = bert_checkpoint
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "city", "population", "which"]
    words += [f"w{i}" for i in range(bert.config.vocab_size - len(words))]
    (tmp_path / "vocab.txt").write_text("".join(f"{w}\n" for w in words))
    tokenizer = TapasTokenizer.from_pretrained(tmp_path, model_max_length=LENGTH)
    assert tokenizer.added_tokens == {"[EMPTY]": bert.config.vocab_size}
    config = tapas.TapasConfig.tiny(vocab_size=len(tokenizer), max_position_embeddings=LENGTH)
    model = tapas.from_bert(path, config)
    table = pd.DataFrame({"city": ["w1", "", "n/a"], "population": ["w2", "?", "w3"]})
    x = tokenizer(table, ["which city?", "which population?"], padding="max_length")
    # "n/a" and "?" are [EMPTY], "" is no token at all, as in transformers
    assert (x["input_ids"] == tokenizer.ids["[EMPTY]"]).sum() == 2 * 2
    assert np.isfinite(np.asarray(ours_forward(model, x).logits)).all()


def test_from_bert_rejects_mismatches(bert_checkpoint, wtq_checkpoint):
    _, bert_path = bert_checkpoint
    with pytest.raises(ValueError, match="hidden_size"):
        tapas.from_bert(bert_path, tapas.TapasConfig.tiny(hidden_size=48, num_attention_heads=4))
    with pytest.raises(ValueError, match="position embeddings"):
        tapas.from_bert(bert_path, tapas.TapasConfig.tiny(max_position_embeddings=81))
    with pytest.raises(ValueError, match="model_type"):
        tapas.from_bert(wtq_checkpoint[1])


def test_bad_inputs_raise():
    model = tapas.TapasForQuestionAnswering(tapas.TapasConfig.tiny(), rngs=nnx.Rngs(0))
    ids = jnp.ones((2, 5), jnp.int32)
    with pytest.raises(ValueError, match=r"token_type_ids must be \[batch, length, 7\]"):
        model(ids, token_type_ids=jnp.zeros((2, 5, 3), jnp.int32))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(jnp.ones((1, LENGTH + 1), jnp.int32))
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        model(ids)


def test_config_round_trips_and_validates():
    config = tapas.TapasConfig.base_wtq()
    assert tapas.TapasConfig.from_hf(json.loads(json.dumps(config.to_hf()))) == config
    legacy = {**WTQ, "type_vocab_size": WTQ["type_vocab_sizes"]}
    del legacy["type_vocab_sizes"]
    assert tapas.TapasConfig.from_hf(legacy).type_vocab_sizes == tuple(WTQ["type_vocab_sizes"])
    with pytest.raises(ValueError, match="type_vocab_sizes must have 7"):
        tapas.TapasConfig(type_vocab_sizes=(3, 256))
    with pytest.raises(ValueError, match="architectures"):
        tapas.TapasConfig.from_hf({**WTQ, "architectures": ["TapasForMaskedLM"]})
    with pytest.raises(ValueError, match="average_approximation_function"):
        dataclasses.replace(config, average_approximation_function="median")


def test_bfloat16_compute_keeps_float32_logits(wtq_checkpoint):
    _, path = wtq_checkpoint
    model = pf.from_pretrained(path, dtype=jnp.bfloat16)
    out = ours_forward(model, inputs())
    assert out.logits.dtype == jnp.float32 and out.logits_aggregation.dtype == jnp.float32
    assert model.tapas.encoder.layer[0].mlp.fc1(jnp.ones((1, 36))).dtype == jnp.bfloat16
