import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from polyformer.training.objectives import vision as ov
from tests.training.objectives.sharded_worker import LinearClassifier

WORKER = Path(__file__).with_name("sharded_worker.py")


def log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    pixel_values = rng.normal(size=(6, 3, 4, 4)).astype(np.float32)
    return {"pixel_values": pixel_values, "labels": np.array([0, 4, 2, 2, 1, 3])}


def test_classification_loss_matches_torch_with_label_smoothing(images):
    model = LinearClassifier(48, 5)
    loss_fn = ov.image_classification(label_smoothing=0.1)
    loss, metrics = loss_fn(model, images, nnx.Rngs(dropout=0))
    logits = np.array(model(images["pixel_values"]).logits)  # writable, for torch
    expected = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits), torch.from_numpy(images["labels"]), label_smoothing=0.1
    )
    np.testing.assert_allclose(loss, expected.item(), rtol=1e-6)
    assert metrics["accuracy"] == np.mean(logits.argmax(-1) == images["labels"])
    # Evaluation: plain cross-entropy, no smoothing.
    eval_loss, _ = loss_fn(model, images, None)
    hand = -np.mean(log_softmax(logits)[np.arange(6), images["labels"]])
    np.testing.assert_allclose(eval_loss, hand, rtol=1e-6)


def test_mixup_blends_images_and_targets_with_one_beta_draw(images):
    model = LinearClassifier(48, 5)
    loss_fn = ov.image_classification(label_smoothing=0.1, mixup_alpha=0.4)
    loss, metrics = loss_fn(model, images, nnx.Rngs(dropout=3))
    lam = float(metrics["mixup_lambda"])
    assert lam == float(jax.random.beta(nnx.Rngs(dropout=3).dropout(), 0.4, 0.4))
    assert 0.0 < lam < 1.0
    x = images["pixel_values"]
    logits = np.asarray(model(lam * x + (1 - lam) * x[::-1]).logits)
    smooth = np.eye(5)[images["labels"]] * 0.9 + 0.1 / 5
    targets = lam * smooth + (1 - lam) * smooth[::-1]
    hand = -np.mean(np.sum(targets * log_softmax(logits), -1))
    np.testing.assert_allclose(loss, hand, rtol=1e-5)
    assert metrics["accuracy"] == np.mean(logits.argmax(-1) == images["labels"])
    again, _ = loss_fn(model, images, nnx.Rngs(dropout=3))
    other, _ = loss_fn(model, images, nnx.Rngs(dropout=4))
    assert again == loss and other != loss
    eval_loss, eval_metrics = loss_fn(model, images, None)
    assert "mixup_lambda" not in eval_metrics
    assert eval_loss == ov.image_classification()(model, images, None)[0]


def test_classification_options_are_checked():
    with pytest.raises(ValueError, match="label_smoothing"):
        ov.image_classification(label_smoothing=1.0)
    with pytest.raises(ValueError, match="mixup_alpha"):
        ov.image_classification(mixup_alpha=-0.1)


def test_sharded_over_8_devices_equals_one_device(tmp_path):
    """Loss and gradients of image classification with mixup and of CLIP's contrastive loss,
    with the batch sharded over 8 simulated devices, equal those on one device: the contrastive
    similarities span the global batch."""
    run = subprocess.run(
        [sys.executable, str(WORKER), str(tmp_path / "out.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((tmp_path / "out.json").read_text())
    assert set(results) == {"image_classification_mixup", "clip_contrastive"}
    for name, result in results.items():
        assert result["devices"] == 8 and result["shards"] == 8, name
        np.testing.assert_allclose(result["sharded_loss"], result["single_loss"], rtol=1e-5)
        for key, value in result["single_metrics"].items():
            np.testing.assert_allclose(result["sharded_metrics"][key], value, rtol=1e-5)
        # float32 sums in another order: differences at the last digits of the largest gradient.
        assert result["grad_max_abs_diff"] <= 1e-5 * result["grad_max_abs"], name
        assert result["grad_max_abs"] > 1e-3  # the gradients compared are not all zero
    # A per-device loss (8 rows each) would differ: the global one is what the test pins.
    clip = results["clip_contrastive"]
    assert abs(clip["per_shard_mean_loss"] - clip["single_loss"]) > 1e-3
