"""Kernel swap: the swap itself, the comparison, and a --quick run of the whole script."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from experiments import kernel_swap
from polyformer.attention import Dense, Favor, MultiHeadAttention, Sparse, patterns


@pytest.fixture(scope="module")
def model():
    return kernel_swap.quick_model()


def kernels(model):
    return [m.kernel for _, m in nnx.iter_graph(model) if isinstance(m, MultiHeadAttention)]


def test_swap_changes_every_kernel_of_a_copy_only(model):
    favor = Favor(num_features=8)
    swapped = kernel_swap.with_kernel(model, favor)
    assert kernels(swapped) == [favor] and all(isinstance(k, Dense) for k in kernels(model))
    pixels = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    # A pattern that keeps every key is exact attention: the logits do not move.
    everything = kernel_swap.with_kernel(model, Sparse(patterns.band(100)))
    np.testing.assert_allclose(
        everything(pixel_values=pixels).logits, model(pixel_values=pixels).logits, atol=1e-5
    )
    same = jax.tree.leaves(nnx.state(swapped))
    for a, b in zip(same, jax.tree.leaves(nnx.state(model)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_compare():
    reference = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]])
    logits = np.array([[2.0, 0.0], [1.0, 1.0], [1.0, 3.0]])
    result = kernel_swap.compare(reference, logits, labels=np.array([0, 1, 1]))
    cosines = [1.0, np.sqrt(0.5), 6 / 10]
    assert result["cosine"] == pytest.approx(np.mean(cosines))
    assert result["cosine_min"] == pytest.approx(0.6)
    assert result["top1_agreement"] == pytest.approx(1 / 3)  # row 1's tie goes to class 0
    assert result["accuracy"] == pytest.approx(2 / 3)


def test_quick_run_writes_the_table_and_plot(tmp_path):
    out, results = tmp_path / "out", tmp_path / "results" / "kernel_swap.md"
    results.parent.mkdir()
    argv = ["--quick", "--images", "16", "--out", str(out), "--results", str(results)]
    result = kernel_swap.main([*argv, "--data-dir", str(tmp_path / "tfds")])
    assert result["images"] == 16 and result["length"] == 17
    assert [row["num_features"] for row in result["favor"]] == [16, 64]
    assert len(result["sparse"]) == 4
    for row in result["favor"] + result["sparse"]:
        assert -1.0 <= row["cosine_min"] <= row["cosine"] <= 1.0 + 1e-9
        assert 0.0 <= row["top1_agreement"] <= 1.0
    kept = {row["pattern"]: row["kept"] for row in result["sparse"]}
    assert kept["band(1)"] < kept["band(4)"] < kept["band(4) + global CLS"] < 1.0
    [tuned] = result["finetuned"]  # --quick: FAVOR+ m=16, 2 steps
    assert tuned["kernel"] == "FAVOR+ m=16" and tuned["steps"] == 2
    assert 0.0 <= tuned["top1_agreement"] <= 1.0
    assert json.loads((out / "kernel_swap.json").read_text())["seeds"] == 1
    assert (out / "kernel_swap.png").stat().st_size > 0
    text = results.read_text()
    assert "FAVOR+ m=64" in text and "band(4) + global CLS" in text and "fine-tuned 2" in text
    assert (
        text.startswith("## Kernel swap") and "Command: `python -m experiments.kernel_swap" in text
    )
    assert "| dense (reference) | 1 | 1 |" in text and "$" not in text
    assert text.endswith("![kernel swap](kernel_swap.png)\n")
    assert (results.parent / "kernel_swap.png").is_file()
