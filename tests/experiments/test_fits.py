"""The scaling-law fits on synthetic losses with known laws: exponents and floors recovered,
bootstrap intervals that cover the truth, the frontier that keeps only the best curve."""

import numpy as np
import pytest

from experiments import fits


def _noisy(x, alpha, scale, irreducible=0.0, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    return (irreducible + (scale / x) ** alpha) * np.exp(noise * rng.standard_normal(len(x)))


def test_power_law_evaluates_its_formula():
    law = fits.PowerLaw(alpha=0.5, scale=100.0, irreducible=1.0, r2=1.0)
    np.testing.assert_allclose(law(np.array([1.0, 25.0, 100.0])), [11.0, 3.0, 2.0])


def test_exact_power_law_is_exact():
    n = np.geomspace(1e3, 1e6, 5)
    fit = fits.fit_power_law(n, (5e4 / n) ** 0.2)
    assert fit.alpha == pytest.approx(0.2, rel=1e-9)
    assert fit.scale == pytest.approx(5e4, rel=1e-6)
    assert fit.irreducible == 0.0
    assert fit.r2 == pytest.approx(1.0)
    np.testing.assert_allclose(fit(n), (5e4 / n) ** 0.2, rtol=1e-9)


@pytest.mark.parametrize(("alpha", "scale"), [(0.076, 8.8e13), (0.3, 1e9), (0.05, 2.7e23)])
def test_power_law_recovers_alpha_and_its_interval_covers_it(alpha, scale):
    n = np.geomspace(1e4, 4e5, 6)
    loss = _noisy(n, alpha, scale, noise=0.005)
    fit = fits.fit_power_law(n, loss)
    assert fit.alpha == pytest.approx(alpha, abs=0.02)
    assert fit.r2 > 0.9
    boot = fits.bootstrap(fits.fit_power_law, n, loss, resamples=300, seed=1)
    lo, hi = boot["alpha_ci"]
    assert lo <= alpha <= hi and hi - lo < 0.1
    assert boot["resamples_used"] + boot["resamples_skipped"] == 300
    assert boot["level"] == 0.95


def test_bootstrap_intervals_cover_the_true_exponent_in_most_noisy_draws():
    n = np.geomspace(1e4, 4e5, 8)
    covered, widths = 0, []
    for seed in range(40):
        loss = _noisy(n, 0.1, 1e9, noise=0.01, seed=seed)
        lo, hi = fits.bootstrap(fits.fit_power_law, n, loss, resamples=200, seed=seed)["alpha_ci"]
        covered += lo <= 0.1 <= hi
        widths.append(hi - lo)
    # A 95% percentile interval from 8 points covers somewhat less often than 95%.
    assert covered >= 32
    # And it is an interval, not the whole line: noise 1% over 1.7 decades pins alpha to ~0.01.
    assert np.median(widths) < 0.03


def test_more_noise_widens_the_interval():
    n = np.geomspace(1e4, 4e5, 8)
    width = {}
    for noise in (0.002, 0.02):
        loss = _noisy(n, 0.2, 1e9, noise=noise, seed=3)
        lo, hi = fits.bootstrap(fits.fit_power_law, n, loss, resamples=200, seed=0)["alpha_ci"]
        width[noise] = hi - lo
    assert width[0.02] > 3 * width[0.002]


def test_offset_fit_recovers_irreducible_loss_that_the_pure_law_misreads():
    n = np.geomspace(1e4, 1e7, 8)
    loss = 1.5 + (1e5 / n) ** 0.35
    offset = fits.fit_power_law_with_offset(n, loss)
    assert offset.irreducible == pytest.approx(1.5, abs=0.02)
    assert offset.alpha == pytest.approx(0.35, abs=0.01)
    assert offset.r2 > 0.9999
    # Fitted without E, the same curve reads a much flatter exponent.
    assert fits.fit_power_law(n, loss).alpha < 0.2
    boot = fits.bootstrap(fits.fit_power_law_with_offset, n, loss, resamples=50, min_distinct=4)
    assert boot["irreducible_ci"][0] <= 1.5 + 1e-3 and boot["alpha_ci"][1] >= 0.35 - 1e-3


def test_offset_fit_with_noise_and_its_intervals_cover_the_truth():
    n = np.geomspace(1e4, 1e7, 10)
    alphas, floors, covered_alpha, covered_floor = [], [], 0, 0
    for seed in range(8):
        loss = _noisy(n, 0.35, 1e5, irreducible=1.5, noise=0.003, seed=seed)
        fit = fits.fit_power_law_with_offset(n, loss)
        alphas.append(fit.alpha)
        floors.append(fit.irreducible)
        boot = fits.bootstrap(
            fits.fit_power_law_with_offset, n, loss, resamples=40, seed=seed, min_distinct=4
        )
        covered_alpha += boot["alpha_ci"][0] <= 0.35 <= boot["alpha_ci"][1]
        covered_floor += boot["irreducible_ci"][0] <= 1.5 <= boot["irreducible_ci"][1]
    assert np.median(alphas) == pytest.approx(0.35, abs=0.03)
    assert np.median(floors) == pytest.approx(1.5, abs=0.05)
    assert covered_alpha >= 6 and covered_floor >= 6


def test_offset_fit_of_a_pure_law_puts_the_floor_near_zero():
    n = np.geomspace(1e4, 1e7, 8)
    fit = fits.fit_power_law_with_offset(n, (1e9 / n) ** 0.2)
    assert fit.irreducible < 0.05
    assert fit.alpha == pytest.approx(0.2, abs=0.01)


def test_fits_reject_what_has_no_power_law():
    with pytest.raises(ValueError, match="positive"):
        fits.fit_power_law(np.array([1.0, 2.0]), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="two distinct"):
        fits.fit_power_law(np.array([3.0, 3.0]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="1-D of one length"):
        fits.fit_power_law(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="three distinct"):
        fits.fit_power_law_with_offset(np.array([1.0, 2.0, 2.0]), np.array([3.0, 2.0, 2.0]))


def test_fit_all_gives_both_laws_with_intervals_or_the_reason_there_is_none():
    n = np.geomspace(1e4, 1e6, 6)
    both = fits.fit_all(n, 1.0 + (1e5 / n) ** 0.3, resamples=30, seed=0)
    assert set(both) == {"power_law", "with_irreducible"}
    for fit in both.values():
        assert {"alpha", "scale", "irreducible", "r2", "alpha_ci", "irreducible_ci"} <= set(fit)
    assert both["with_irreducible"]["alpha"] == pytest.approx(0.3, abs=0.01)
    two = fits.fit_all(np.array([1e4, 1e5]), np.array([3.0, 2.0]), resamples=10, seed=0)
    assert "no bootstrap resample" in two["power_law"]["error"]
    assert "three distinct" in two["with_irreducible"]["error"]


def test_local_exponents_expose_a_bend():
    n = np.geomspace(1e3, 1e7, 8)
    loss = 1.0 + (1e4 / n) ** 0.5  # steep while far from the floor, flat near it
    low, high = fits.local_exponents(n, loss)
    assert (low["from"], high["to"]) == (pytest.approx(1e3), pytest.approx(1e7))
    assert low["alpha"] > 2 * high["alpha"]


def test_lower_envelope_takes_the_best_curve_where_it_runs():
    small = (np.array([1.0, 10.0, 100.0]), np.array([5.0, 3.0, 2.5]))
    large = (np.array([10.0, 100.0, 1000.0]), np.array([4.0, 2.0, 1.0]))
    compute, loss, owner = fits.lower_envelope([small, large], points=4)
    np.testing.assert_allclose(compute, [1.0, 10.0, 100.0, 1000.0])
    np.testing.assert_allclose(loss, [5.0, 3.0, 2.0, 1.0])
    np.testing.assert_array_equal(owner, [0, 0, 1, 1])


def test_frontier_leaves_out_points_that_less_compute_beat():
    # The small run ends at C = 100 with loss 2; the large one starts there at 9 and is still at
    # 3 at C = 1000: there the envelope is worse than what C = 100 already reached.
    small = (np.array([1.0, 100.0]), np.array([5.0, 2.0]))
    large = (np.array([100.0, 10000.0]), np.array([9.0, 1.0]))
    compute, loss, owner = fits.frontier([small, large], points=5)
    np.testing.assert_allclose(compute, [1.0, 10.0, 100.0, 10000.0])
    np.testing.assert_allclose(loss, [5.0, np.sqrt(10.0), 2.0, 1.0])
    np.testing.assert_array_equal(owner, [0, 0, 0, 1])


def test_frontier_of_a_ladder_follows_the_compute_optimal_law():
    """Curves L(N, D) = (N_c/N)^0.3 + (D_c/D)^0.3 of nine sizes against C = 6 N D: for each
    compute the best size moves from small to large, and with both exponents 0.3 the
    compute-optimal loss falls as C^(-0.3 * 0.3 / (0.3 + 0.3)) = C^-0.15."""
    curves = []
    for n in np.geomspace(1e4, 1e8, 9):
        tokens = np.geomspace(1e5, 1e9, 40)
        curves.append((6 * n * tokens, (1e6 / n) ** 0.3 + (1e7 / tokens) ** 0.3))
    compute, loss, owner = fits.frontier(curves, points=40)
    assert np.all(np.diff(loss) < 0)
    assert np.all(np.diff(owner) >= 0)
    assert set(owner) == set(range(9))
    assert fits.fit_power_law(compute, loss).alpha == pytest.approx(0.15, abs=0.01)
