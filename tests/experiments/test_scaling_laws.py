"""The scaling-laws fits on synthetic data (no training): exponents recovered, intervals honest."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from experiments import scaling_laws as sl
from polyformer.models.gpt import GPT2Config, GPT2LMHeadModel
from polyformer.training.trainer import non_embedding_params


def _noisy(x, alpha, scale, irreducible=0.0, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    return (irreducible + (scale / x) ** alpha) * np.exp(noise * rng.standard_normal(len(x)))


@pytest.mark.parametrize("alpha", [0.076, 0.3])
def test_power_law_recovers_alpha_and_its_interval_covers_it(alpha):
    n = np.geomspace(1e4, 4e5, 6)
    loss = _noisy(n, alpha, 8.8e13 if alpha < 0.1 else 1e9, noise=0.005)
    fit = sl.fit_power_law(n, loss)
    assert fit.alpha == pytest.approx(alpha, abs=0.02)
    assert fit.r2 > 0.9
    boot = sl.bootstrap(sl.fit_power_law, n, loss, resamples=300, seed=1)
    lo, hi = boot["alpha_ci"]
    assert lo <= alpha <= hi and hi - lo < 0.1
    assert boot["resamples_used"] + boot["resamples_skipped"] == 300


def test_exact_power_law_is_exact():
    n = np.geomspace(1e3, 1e6, 5)
    fit = sl.fit_power_law(n, (5e4 / n) ** 0.2)
    assert fit.alpha == pytest.approx(0.2, rel=1e-9)
    assert fit.scale == pytest.approx(5e4, rel=1e-6)
    assert fit.r2 == pytest.approx(1.0)
    np.testing.assert_allclose(fit(n), (5e4 / n) ** 0.2, rtol=1e-9)


def test_offset_fit_recovers_irreducible_loss_that_the_pure_law_misreads():
    n = np.geomspace(1e4, 1e7, 8)
    loss = 1.5 + (1e5 / n) ** 0.35
    offset = sl.fit_power_law_with_offset(n, loss)
    assert offset.irreducible == pytest.approx(1.5, abs=0.02)
    assert offset.alpha == pytest.approx(0.35, abs=0.01)
    assert offset.r2 > 0.9999
    # Fitted without E, the same curve reads a much flatter exponent.
    assert sl.fit_power_law(n, loss).alpha < 0.2
    boot = sl.bootstrap(sl.fit_power_law_with_offset, n, loss, resamples=50, min_distinct=4)
    assert boot["irreducible_ci"][0] <= 1.5 + 1e-3 and boot["alpha_ci"][1] >= 0.35 - 1e-3


def test_lower_envelope_takes_the_best_curve_where_it_runs():
    small = (np.array([1.0, 10.0, 100.0]), np.array([5.0, 3.0, 2.5]))
    large = (np.array([10.0, 100.0, 1000.0]), np.array([4.0, 2.0, 1.0]))
    compute, loss, owner = sl.lower_envelope([small, large], points=4)
    np.testing.assert_allclose(compute, [1.0, 10.0, 100.0, 1000.0])
    np.testing.assert_allclose(loss, [5.0, 3.0, 2.0, 1.0])
    np.testing.assert_array_equal(owner, [0, 0, 1, 1])


def test_frontier_leaves_out_points_that_less_compute_beat():
    # The small run ends at C = 100 with loss 2; the large one starts there at 9 and is still at
    # 3 at C = 1000: there the envelope is worse than what C = 100 already reached.
    small = (np.array([1.0, 100.0]), np.array([5.0, 2.0]))
    large = (np.array([100.0, 10000.0]), np.array([9.0, 1.0]))
    compute, loss, owner = sl.frontier([small, large], points=5)
    np.testing.assert_allclose(compute, [1.0, 10.0, 100.0, 10000.0])
    np.testing.assert_allclose(loss, [5.0, np.sqrt(10.0), 2.0, 1.0])
    np.testing.assert_array_equal(owner, [0, 0, 0, 1])


def test_fits_reject_what_has_no_power_law():
    with pytest.raises(ValueError, match="positive"):
        sl.fit_power_law(np.array([1.0, 2.0]), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="three distinct"):
        sl.fit_power_law_with_offset(np.array([1.0, 2.0, 2.0]), np.array([3.0, 2.0, 2.0]))


@pytest.mark.parametrize("size", sl.Ladder.quick().sizes[:2] + sl.Ladder.full().sizes[-1:])
def test_parameter_count_matches_the_model(size):
    config = GPT2Config.tiny(n_layer=size.n_layer, n_embd=size.n_embd, n_head=size.n_head)
    model = nnx.eval_shape(lambda: GPT2LMHeadModel(config, rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    assert sl.non_embedding_params(size.n_layer, size.n_embd) == non_embedding_params(params)
    assert jax.tree.leaves(params)


def test_ladders_span_the_asked_range():
    for ladder in (sl.Ladder.quick(), sl.Ladder.full()):
        n = [sl.non_embedding_params(s.n_layer, s.n_embd) for s in ladder.sizes]
        assert len(n) >= 6 and max(n) / min(n) >= 30 and n == sorted(n)


def _synthetic_result(steps=100, tokens_per_step=1024):
    """A scaling_laws.json as a training run leaves it, with curves from a known law."""
    runs = []
    for size in sl.Ladder.quick().sizes:
        n = sl.non_embedding_params(size.n_layer, size.n_embd)
        evals = []
        for step in range(10, steps + 1, 10):
            tokens = step * tokens_per_step
            loss = 2.0 + (1e6 / n) ** 0.3 + (2e4 / tokens) ** 0.5
            evals.append(
                {"step": step, "tokens": tokens, "compute": 6.0 * n * tokens, "loss": loss}
            )
        runs.append(
            dict(
                name=size.name, n_layer=size.n_layer, n_embd=size.n_embd, n_head=size.n_head,
                non_embedding_params=n, params=n + 4096 * size.n_embd, learning_rate=1e-3,
                steps=steps, batch_size=16, seq_len=64, tokens_per_step=tokens_per_step,
                tokens=steps * tokens_per_step, final_eval_loss=evals[-1]["loss"],
                final_train_loss=evals[-1]["loss"], wall_s=1.0, eval=evals, train=[],
            )
        )  # fmt: skip
    protocol = dict(
        steps=steps, batch_size=16, seq_len=64, eval_every=10, eval_batches=4, warmup_steps=5,
        end_lr_ratio=0.1, vocab_size=4096, precision="float32", dropout=0.0,
    )  # fmt: skip
    machine = dict(cpu="test", cores=2, devices=["cpu"], python="3", jax="0", date="today")
    return dict(
        command="python experiments/scaling_laws.py --quick", machine=machine,
        protocol=protocol, train_tokens=3_000_000, runs=runs, load_average_start=[1.0] * 3,
        load_average_end=[1.0] * 3, wall_s=60.0,
    )  # fmt: skip


def test_refit_writes_json_figures_and_report(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "scaling_laws.json").write_text(json.dumps(_synthetic_result()))
    results = tmp_path / "results" / "scaling.md"
    results.parent.mkdir()
    argv = [f"--out={out}", f"--results={results}", "--resamples=40", "--frontier-points=12"]
    result = sl.main(["--refit", *argv])

    for name in ("scaling_laws.json", "scaling_laws.md", "loss_vs_compute.png"):
        assert (out / name).stat().st_size > 0
    assert (tmp_path / "results" / "scaling" / "loss_vs_params.png").stat().st_size > 0
    text = results.read_text()
    assert "(scaling/loss_vs_compute.png)" in text and "--refit" in text
    # The final losses are exactly 2 + (1e6 / N)^0.3 plus a constant: the offset fit finds it.
    offset = result["fits"]["loss_vs_params"]["with_irreducible"]
    assert offset["alpha"] == pytest.approx(0.3, abs=0.01)
    assert json.loads((out / "scaling_laws.json").read_text())["fits"]["frontier"]
