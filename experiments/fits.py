"""Power laws fitted to losses, with bootstrap intervals, and the compute-efficient frontier of
loss curves: what scaling-law studies fit (Kaplan et al. 2020, Hoffmann et al. 2022).

Every fit is least squares on log loss:
  L(x) = (scale / x)^alpha                 `fit_power_law`, a straight line in log-log;
  L(x) = E + (scale / x)^alpha             `fit_power_law_with_offset`, E the irreducible loss.
`bootstrap` resamples the points with replacement for percentile intervals of alpha and E;
`frontier` reads the least loss any of several curves reached for each compute.

numpy and scipy only: no model code.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """L(x) = irreducible + (scale / x)^alpha, fitted by least squares on log L.

    r2: the coefficient of determination of log L (1 - residual / total sum of squares)."""

    alpha: float
    scale: float
    irreducible: float
    r2: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        return self.irreducible + np.exp(self.alpha * (math.log(self.scale) - np.log(x)))


def _r2(log_loss: np.ndarray, log_fit: np.ndarray) -> float:
    total = float(np.sum((log_loss - log_loss.mean()) ** 2))
    residual = float(np.sum((log_loss - log_fit) ** 2))
    return 1.0 - residual / total if total > 0 else float("nan")


def _check(x: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, loss = np.asarray(x, np.float64), np.asarray(loss, np.float64)
    if x.shape != loss.shape or x.ndim != 1:
        raise ValueError(f"x and loss must be 1-D of one length, got {x.shape} and {loss.shape}")
    if np.any(x <= 0) or np.any(loss <= 0):
        raise ValueError("a power law needs positive x and loss")
    if len(np.unique(x)) < 2:
        raise ValueError("a power law needs at least two distinct x")
    return x, loss


def fit_power_law(x: np.ndarray, loss: np.ndarray) -> PowerLaw:
    """L = (scale / x)^alpha: a straight line through (log x, log L), slope -alpha."""
    x, loss = _check(x, loss)
    slope, intercept = np.polyfit(np.log(x), np.log(loss), 1)
    alpha = -slope
    # log L = alpha log scale - alpha log x; a flat or rising line has no finite scale.
    scale = math.exp(intercept / alpha) if alpha > 0 and intercept / alpha < 700 else math.inf
    fitted = intercept + slope * np.log(x)
    return PowerLaw(float(alpha), scale, 0.0, _r2(np.log(loss), fitted))


def fit_power_law_with_offset(x: np.ndarray, loss: np.ndarray) -> PowerLaw:
    """L = E + (scale / x)^alpha with 0 <= E < min L: a profile over E (for each E, the straight
    line through (log x, log(L - E))) for a start, refined by least squares on log L."""
    from scipy.optimize import least_squares

    x, loss = _check(x, loss)
    if len(np.unique(x)) < 3:
        raise ValueError("an offset power law needs at least three distinct x")
    log_x, log_loss, floor = np.log(x), np.log(loss), float(loss.min())

    def residuals(p):
        irreducible, alpha, log_scale = p
        return np.log(irreducible + np.exp(alpha * (log_scale - log_x))) - log_loss

    best = None
    for irreducible in np.linspace(0.0, 0.98, 50) * floor:
        slope, intercept = np.polyfit(log_x, np.log(loss - irreducible), 1)
        if slope >= 0:
            continue
        start = np.array([irreducible, -slope, intercept / -slope])
        cost = float(np.sum(residuals(start) ** 2))
        if best is None or cost < best[0]:
            best = (cost, start)
    if best is None:  # loss does not fall with x at all: the offset cannot help
        return fit_power_law(x, loss)
    lower = [0.0, 1e-6, -np.inf]
    upper = [floor * (1 - 1e-9), 20.0, np.inf]
    start = np.clip(best[1], [lo + 1e-12 for lo in lower[:2]] + [-np.inf], upper)
    solution = least_squares(residuals, start, bounds=(lower, upper), x_scale="jac")
    irreducible, alpha, log_scale = solution.x
    fitted = log_loss + residuals(solution.x)
    scale = math.exp(log_scale) if log_scale < 700 else math.inf
    return PowerLaw(float(alpha), scale, float(irreducible), _r2(log_loss, fitted))


def bootstrap(
    fit: Callable[[np.ndarray, np.ndarray], PowerLaw],
    x: np.ndarray,
    loss: np.ndarray,
    resamples: int = 1000,
    seed: int = 0,
    min_distinct: int = 3,
    level: float = 0.95,
) -> dict:
    """Percentile confidence intervals of alpha and E: `fit` on `resamples` draws of the points
    with replacement. Draws with fewer than `min_distinct` distinct x (no line to fit) and fits
    that fail are skipped and counted."""
    x, loss = _check(x, loss)
    rng = np.random.default_rng(seed)
    alphas, offsets, skipped = [], [], 0
    for _ in range(resamples):
        pick = rng.integers(0, len(x), len(x))
        if len(np.unique(x[pick])) < min_distinct:
            skipped += 1
            continue
        try:
            result = fit(x[pick], loss[pick])
        except (ValueError, np.linalg.LinAlgError):
            skipped += 1
            continue
        alphas.append(result.alpha)
        offsets.append(result.irreducible)
    if not alphas:
        raise ValueError("no bootstrap resample could be fitted")
    tails = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    return {
        "alpha_ci": [float(v) for v in np.percentile(alphas, tails)],
        "irreducible_ci": [float(v) for v in np.percentile(offsets, tails)],
        "alpha_std": float(np.std(alphas)),
        "resamples": resamples,
        "resamples_used": len(alphas),
        "resamples_skipped": skipped,
        "level": level,
    }


def lower_envelope(
    curves: Sequence[tuple[np.ndarray, np.ndarray]], points: int = 40
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The compute-efficient frontier of loss curves `[(compute, loss), ...]` (each increasing in
    compute): at `points` log-spaced C from the smallest to the largest compute of any curve,
    the least loss of the curves whose range covers C, each interpolated linearly in
    (log C, log L). Returns (C `[points]`, L `[points]`, index of the curve that attains it)."""
    lo = min(float(c[0]) for c, _ in curves)
    hi = max(float(c[-1]) for c, _ in curves)
    grid = np.geomspace(lo, hi, points)
    stacked = np.full((len(curves), points), np.inf)
    for i, (compute, loss) in enumerate(curves):
        compute, loss = np.asarray(compute, np.float64), np.asarray(loss, np.float64)
        inside = (grid >= compute[0] * (1 - 1e-12)) & (grid <= compute[-1] * (1 + 1e-12))
        stacked[i, inside] = np.exp(np.interp(np.log(grid[inside]), np.log(compute), np.log(loss)))
    best = np.argmin(stacked, axis=0)
    return grid, stacked[best, np.arange(points)], best


def frontier(
    curves: Sequence[tuple[np.ndarray, np.ndarray]], points: int = 40
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`lower_envelope` less its dominated points: a point is kept only if its loss is below the
    envelope's at every smaller compute. Where the best curve at C is worse than what less
    compute already reached (past the end of a small model's run, before a larger one has
    caught up), the least loss for compute C is the earlier one; such points show where the
    ladder has a gap, not the law, so they are left out of the fit."""
    compute, loss, owner = lower_envelope(curves, points)
    best_before = np.concatenate([[np.inf], np.minimum.accumulate(loss)[:-1]])
    keep = loss < best_before
    return compute[keep], loss[keep], owner[keep]


def fit_all(x: np.ndarray, loss: np.ndarray, resamples: int, seed: int) -> dict:
    """Both laws, each with its bootstrap intervals, as JSON; a law that cannot be fitted, or
    whose resamples cannot (too few distinct x), is {"error": why}."""
    out = {}
    for name, fit, distinct in (
        ("power_law", fit_power_law, 3),
        ("with_irreducible", fit_power_law_with_offset, 4),
    ):
        try:
            out[name] = {
                **dataclasses.asdict(fit(x, loss)),
                **bootstrap(fit, x, loss, resamples, seed, min_distinct=distinct),
            }
        except ValueError as error:
            out[name] = {"error": str(error)}
    return out


def local_exponents(x: np.ndarray, loss: np.ndarray, parts: int = 2) -> list[dict]:
    """The pure law fitted separately to the lower and upper `parts` of the points (by x): a
    single exponent averages over any bend these expose."""
    order = np.argsort(x)
    out = []
    for chunk in np.array_split(order, parts):
        if len(np.unique(x[chunk])) >= 2:
            fit = fit_power_law(x[chunk], loss[chunk])
            out.append(
                {"from": float(x[chunk].min()), "to": float(x[chunk].max()), "alpha": fit.alpha}
            )
    return out
