"""TAPAS against transformers' TapasForQuestionAnswering and TapasModel: same checkpoint, same
inputs, same logits; checkpoints both ways; the encoder initialised from BERT."""

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
    TINY,
    WTQ,
    assert_logits_match,
    forward,
    hf_forward,
    random_hf_model,
    table_inputs,
)

LENGTH = TINY["max_position_embeddings"]
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def inputs(**kwargs):
    return table_inputs(TINY["vocab_size"], TINY["type_vocab_sizes"], LENGTH, **kwargs)


encode = nnx.jit(lambda model, *args: model(*args))


def ours_forward(model, x):
    return forward(model, *(jnp.asarray(x[k]) for k in INPUT_NAMES))


@pytest.fixture(scope="module")
def wtq_checkpoint(tmp_path_factory):
    """(the transformers model, the directory its save_pretrained wrote): WTQ heads, TINY."""
    model = random_hf_model()
    path = tmp_path_factory.mktemp("tiny-tapas-wtq")
    model.save_pretrained(path)
    return model, path


CONFIGS = {
    "absolute_positions_empty_column": dict(
        reset_position_index_per_cell=False, allow_empty_column_selection=True
    ),
    "no_aggregation": dict(num_aggregation_labels=0, aggregation_labels=None, temperature=1.0),
    "exact_relu": dict(hidden_act="relu", layer_norm_eps=1e-5, num_hidden_layers=1),
}


def test_wtq_logits_match_transformers(wtq_checkpoint):
    hf_model, path = wtq_checkpoint
    ours = pf.from_pretrained(path)
    assert isinstance(ours, tapas.TapasForQuestionAnswering)
    x = inputs()
    want, got = hf_forward(hf_model, x), ours_forward(ours, x)
    assert_logits_match(got.logits, want.logits, x["attention_mask"])
    np.testing.assert_allclose(
        got.logits_aggregation, want.logits_aggregation.numpy(), atol=1e-4, rtol=0
    )
    # Different examples select different columns, so the column masking is exercised.
    assert len(set(np.argmax(np.asarray(got.column_logits), -1).tolist())) > 1


@pytest.mark.parametrize("name", CONFIGS)
def test_logits_match_transformers(name, tmp_path):
    hf_model = random_hf_model(**CONFIGS[name])
    hf_model.save_pretrained(tmp_path)
    ours = pf.from_pretrained(tmp_path)
    x = inputs()
    want, got = hf_forward(hf_model, x), ours_forward(ours, x)
    assert_logits_match(got.logits, want.logits, x["attention_mask"])
    if hf_model.config.num_aggregation_labels:
        np.testing.assert_allclose(
            got.logits_aggregation, want.logits_aggregation.numpy(), atol=1e-4, rtol=0
        )
    else:
        assert got.logits_aggregation is None


def test_multi_column_logits_match_transformers(tmp_path):
    """Without select_one_column transformers returns logits only with labels (its inference
    path needs column logits), and only with float labels (integer ones fail in its Bernoulli
    log-likelihood); ours returns the same logits either way."""
    hf_model = random_hf_model(select_one_column=False, average_logits_per_cell=True)
    hf_model.save_pretrained(tmp_path)
    ours = pf.from_pretrained(tmp_path)
    x = inputs()
    labels = {k: x[k] for k in ("float_answer", "numeric_values", "numeric_values_scale")}
    want = hf_forward(hf_model, x, labels=x["labels"].astype(np.float32), **labels).logits.numpy()
    got = np.asarray(ours_forward(ours, x).logits)
    real = x["attention_mask"].astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=0)


def test_base_model_matches_transformers(tmp_path):
    hf_model = random_hf_model(transformers.TapasModel)
    hf_model.save_pretrained(tmp_path)
    ours = pf.from_pretrained(tmp_path)
    assert isinstance(ours, tapas.TapasModel)
    x = inputs()
    want = hf_forward(hf_model, x, output_hidden_states=True)
    call = nnx.jit(lambda m, *a: m(*a, output_hidden_states=True))
    got = call(ours, *(jnp.asarray(x[k]) for k in INPUT_NAMES))
    real = x["attention_mask"].astype(bool)
    assert len(got.hidden_states) == len(want.hidden_states) == TINY["num_hidden_layers"] + 1
    for g, w in zip(got.hidden_states, want.hidden_states, strict=True):
        np.testing.assert_allclose(np.asarray(g)[real], w.numpy()[real], atol=1e-4, rtol=0)
    np.testing.assert_allclose(got.pooler_output, want.pooler_output.numpy(), atol=1e-4, rtol=0)


def test_save_pretrained_round_trips_through_transformers(wtq_checkpoint, tmp_path):
    hf_model, path = wtq_checkpoint
    ours = pf.from_pretrained(path)
    pf.save_pretrained(ours, tmp_path)
    # Every tensor comes back bit for bit, under the same names.
    original, saved = (
        load_file(path / "model.safetensors"),
        load_file(tmp_path / "model.safetensors"),
    )
    assert sorted(original) == sorted(saved)
    for name, tensor in original.items():
        np.testing.assert_array_equal(saved[name], tensor, err_msg=name)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["TapasForQuestionAnswering"]
    reloaded, info = transformers.TapasForQuestionAnswering.from_pretrained(
        tmp_path, output_loading_info=True
    )
    assert not any(info.values()), info
    for field in (
        "temperature",
        "cell_selection_preference",
        "huber_loss_delta",
        "select_one_column",
    ):
        assert getattr(reloaded.config, field) == getattr(hf_model.config, field)
    assert reloaded.config.aggregation_labels == WTQ["aggregation_labels"]
    assert ours.config.aggregation_labels == ("NONE", "SUM", "AVERAGE", "COUNT")
    hash(ours.config)
    x = inputs()
    assert_logits_match(
        hf_forward(reloaded.eval(), x).logits, hf_forward(hf_model, x).logits, x["attention_mask"]
    )


def test_base_model_saves_for_transformers(tmp_path):
    ours = tapas.TapasModel(tapas.TapasConfig.tiny(), rngs=nnx.Rngs(1))
    pf.save_pretrained(ours, tmp_path)
    hf_model, info = transformers.TapasModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info
    x = inputs()
    want = hf_forward(hf_model.eval(), x).last_hidden_state.numpy()
    got = np.asarray(encode(ours, *(jnp.asarray(x[k]) for k in INPUT_NAMES)).last_hidden_state)
    real = x["attention_mask"].astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=0)


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
    assert model.tapas.encoder.layer[0].intermediate(jnp.ones((1, 36))).dtype == jnp.bfloat16


@pytest.mark.heavy
def test_official_wtq_configuration_matches_transformers(tmp_path):
    """google/tapas-base-finetuned-wtq's configuration (random weights): logits, aggregation
    logits and the weakly supervised loss."""
    hf_model = random_hf_model(**{k: WTQ[k] for k in TINY})
    hf_model.save_pretrained(tmp_path)
    ours = pf.from_pretrained(tmp_path)
    x = table_inputs(
        WTQ["vocab_size"], WTQ["type_vocab_sizes"], 48, shapes=[(3, 4, 5), (2, 6, 4)], unanswered=()
    )
    extra = {k: x[k] for k in ("labels", "float_answer", "numeric_values", "numeric_values_scale")}
    want = hf_forward(hf_model, x, **extra)
    got = ours(
        *(jnp.asarray(x[k]) for k in INPUT_NAMES), **{k: jnp.asarray(v) for k, v in extra.items()}
    )
    assert_logits_match(got.logits, want.logits, x["attention_mask"])
    np.testing.assert_allclose(
        got.logits_aggregation, want.logits_aggregation.numpy(), atol=1e-4, rtol=0
    )
    np.testing.assert_allclose(float(got.loss), want.loss.item(), atol=1e-4, rtol=0)
