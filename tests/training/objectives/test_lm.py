"""causal_lm on packed rows: two documents in one row give each one's logits and per-token
losses alone, and no token predicts across the boundary."""

import jax
import numpy as np
import pytest
from flax import nnx

from polyformer.models.gpt import GPT2Config, GPT2LMHeadModel
from polyformer.models.gpt.loss import chunked_lm_loss
from polyformer.training.data import pack_documents
from polyformer.training.objectives.lm import causal_lm

END = 1030  # GPT2Config.tiny()'s end-of-text id


def document(length: int, seed: int) -> np.ndarray:
    """`length` tokens, the last one END (as the corpus ends every document)."""
    body = np.random.default_rng(seed).integers(0, END, length - 1)
    return np.append(body, END).astype(np.int32)


@nnx.jit
def logits_and_losses(model, inputs, targets, positions, segment_ids):
    out = model(inputs, position_ids=positions, segment_ids=segment_ids, output_hidden_states=True)
    losses, _ = chunked_lm_loss(out.hidden_states[-1], model.output_kernel(), targets)
    return out.logits, losses


@pytest.fixture(scope="module")
def model():
    return GPT2LMHeadModel(GPT2Config.tiny(), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def packed():
    """Documents of 6 and 9 tokens in one row of 15, and the token after it (a third one's)."""
    docs = [document(6, 1), document(9, 2)]
    stream = np.concatenate([*docs, document(4, 3)])
    inputs, targets = stream[None, :15], stream[None, 1:16]
    return docs, {"inputs": inputs, "targets": targets, **pack_documents(inputs, END)}


def test_two_packed_documents_give_the_logits_and_losses_each_gives_alone(model, packed):
    docs, batch = packed
    logits, losses = logits_and_losses(
        model, batch["inputs"], batch["targets"], batch["positions"], batch["segment_ids"]
    )
    start = 0
    for doc in docs:
        n = len(doc)
        alone_logits, alone_losses = logits_and_losses(
            model, doc[None, :-1], doc[None, 1:], None, None
        )
        # The document's last token (END) has no target of its own: the next document's first.
        row = slice(start, start + n - 1)
        np.testing.assert_allclose(logits[0, row], alone_logits[0], atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(losses[0, row], alone_losses[0], atol=1e-5, rtol=1e-5)
        assert batch["weights"][0, start + n - 1] == 0
        assert np.all(batch["weights"][0, row] == 1)
        start += n


def test_the_packed_loss_is_the_mean_over_each_documents_own_targets(model, packed):
    docs, batch = packed
    loss, metrics = jax.jit(lambda b: causal_lm(model, b, None))(batch)
    alone = np.concatenate(
        [logits_and_losses(model, d[None, :-1], d[None, 1:], None, None)[1][0] for d in docs]
    )
    assert len(alone) == batch["weights"].sum() == 13
    np.testing.assert_allclose(loss, alone.mean(), rtol=1e-6)
    assert 0 <= metrics["accuracy"] <= 1


def test_segment_ids_without_weights_are_refused(model, packed):
    _, batch = packed
    unweighted = {k: v for k, v in batch.items() if k != "weights"}
    with pytest.raises(ValueError, match="weights that are 0 at each document's last token"):
        causal_lm(model, unweighted, None)
