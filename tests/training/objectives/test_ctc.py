"""The CTC loss against torch.nn.functional.ctc_loss, and the objective on a tiny Wav2Vec2."""

import dataclasses
import types

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from polyformer.models.wav2vec2 import Wav2Vec2Config, Wav2Vec2ForCTC
from polyformer.models.wav2vec2.model import feat_extract_output_lengths
from polyformer.training.objectives import OBJECTIVES
from polyformer.training.objectives.ctc import ctc, ctc_feasible, ctc_loss


def torch_ctc(logits, frames, labels, label_lengths, reduction, zero_infinity):
    log_probs = torch.log_softmax(torch.tensor(np.asarray(logits)), -1).transpose(0, 1)
    targets = torch.from_numpy(np.asarray(labels)).long()
    return torch.nn.functional.ctc_loss(
        log_probs, targets, torch.tensor(frames), torch.tensor(label_lengths), blank=0,
        reduction=reduction, zero_infinity=zero_infinity,
    ).item()  # fmt: skip


def paddings(lengths, width):
    return (np.arange(width)[None, :] >= np.asarray(lengths)[:, None]).astype(np.float32)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_matches_torch(reduction):
    rng = np.random.default_rng(0)
    batch, frames, vocab, width = 5, 40, 9, 12
    logits = rng.normal(size=(batch, frames, vocab)).astype(np.float32) * 3
    frame_lengths = [40, 33, 21, 40, 15]
    label_lengths = [12, 7, 10, 1, 5]
    labels = rng.integers(1, vocab, size=(batch, width))
    labels[0, 3:6] = 4  # repeated labels need a blank between them
    got = ctc_loss(jnp.asarray(logits), paddings(frame_lengths, frames), labels,
                   paddings(label_lengths, width), reduction=reduction)  # fmt: skip
    want = torch_ctc(logits, frame_lengths, labels, label_lengths, reduction, False)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_zero_infinity_drops_utterances_that_cannot_fit():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 10, 5)).astype(np.float32)
    labels = np.array([[1, 1, 1, 1, 1, 1], [1, 2, 3, 0, 0, 0], [2, 2, 3, 3, 4, 1]])
    label_lengths, frame_lengths = [6, 3, 6], [10, 10, 7]  # rows 0 and 2 need 11 and 8 frames
    label_paddings = paddings(label_lengths, 6)
    assert ctc_feasible(labels, label_paddings, np.array(frame_lengths)).tolist() == [
        False, True, False,
    ]  # fmt: skip
    got = ctc_loss(logits, paddings(frame_lengths, 10), labels, label_paddings,
                   reduction="sum", zero_infinity=True)  # fmt: skip
    want = torch_ctc(logits, frame_lengths, labels, label_lengths, "sum", True)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


@nnx.jit
def loss_and_logits(model, batch):
    logits = model(batch["input_values"], attention_mask=batch["attention_mask"]).logits
    return OBJECTIVES["ctc"](model, batch, None), logits


def test_objective_masks_padded_frames_and_labels():
    config = Wav2Vec2Config.tiny(
        vocab_size=7, feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
        ctc_loss_reduction="mean",
    )  # fmt: skip
    model = Wav2Vec2ForCTC(config, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(2)
    audio = rng.normal(size=(2, 1600)).astype(np.float32)
    mask = np.ones((2, 1600), np.int32)
    mask[1, 900:] = 0
    audio[1, 900:] = 0.0
    labels = np.array([[1, 2, 3, 4], [5, 6, -100, -100]], np.int32)
    batch = {"input_values": audio, "attention_mask": mask, "labels": labels}
    (loss, metrics), logits = loss_and_logits(model, batch)
    logits = np.asarray(logits)
    # torch sees each row's real frames and labels only.
    rows, lengths = [], []
    for row, samples, n in ((0, 1600, 4), (1, 900, 2)):
        frames = int(feat_extract_output_lengths(config, samples))
        lengths.append(frames)
        real = logits[row : row + 1, :frames]
        rows.append(torch_ctc(real, [frames], labels[row : row + 1, :n], [n], "sum", False) / n)
    assert lengths[1] < logits.shape[1]
    np.testing.assert_allclose(float(loss), np.mean(rows), rtol=1e-5)
    real = np.arange(logits.shape[1])[None, :] < np.array(lengths)[:, None]
    blank = (logits.argmax(-1) == 0) & real
    np.testing.assert_allclose(float(metrics["blank_fraction"]), blank.sum() / real.sum())


@dataclasses.dataclass
class FixedLogits:
    """A stand-in model: the objective's arithmetic, the config's reduction, no forward pass."""

    config: Wav2Vec2Config
    logits: np.ndarray

    def __call__(self, input_values, attention_mask=None, rngs=None):
        return types.SimpleNamespace(logits=jnp.asarray(self.logits))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_objective_takes_reduction_from_the_config(reduction):
    config = Wav2Vec2Config.tiny(vocab_size=6, ctc_loss_reduction=reduction)
    logits = np.random.default_rng(3).normal(size=(2, 8, 6)).astype(np.float32)
    # 170 samples are 8 frames of the tiny feature encoder; 150 samples are 7.
    mask = np.ones((2, 170), np.int32)
    mask[1, 150:] = 0
    labels = np.array([[1, 2, 2], [3, -100, -100]], np.int32)
    batch = {"input_values": np.zeros((2, 170), np.float32), "attention_mask": mask,
             "labels": labels}  # fmt: skip
    assert [int(feat_extract_output_lengths(config, n)) for n in (170, 150)] == [8, 7]
    loss, _ = ctc(FixedLogits(config, logits), batch, None)
    want = torch_ctc(logits, [8, 7], np.maximum(labels, 1), [3, 1], reduction, False)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
