"""Paired statistics for two checkpoints evaluated on the same rows, and intervals for single rates.

Every checkpoint of a study is evaluated on the same rows of a split with the same sampling
seed, so two checkpoints are compared episode by episode. Episodes that share a unit (the task's
`Task.unit`: a GeneralPoints hand, a V-IRL route; a small game repeats hands, and several seeds
evaluate the same rows) are not independent evidence, so the resampling unit is that cluster: each
unit carries the totals of its paired episodes, `num / den` for checkpoint A and for checkpoint B.
A metric is a ratio of sums over units (success: successes / episodes; rule memorisation:
memorised attempts / OOD attempts; ...), and the compared number is rate(A) - rate(B).

- Interval: paired cluster bootstrap over units (`scipy.stats.bootstrap`, percentile method,
  fixed seed, so a report is reproducible).
- p-value: exact McNemar (`scipy.stats.binomtest` on the discordant pairs) for a binary metric
  when no unit repeats; otherwise a paired permutation test over units
  (`scipy.stats.permutation_test`, swapping the two checkpoints' totals within a unit).
- Verdict: see `interval_verdict`.
- Single rates: Wilson score intervals (`scipy.stats.binomtest(...).proportion_ci`), correct at
  0 and n successes; a normal interval where an evaluation reports only a standard error.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 1.0 - CONFIDENCE
N_RESAMPLES = 9999
SEED = 20250117  # fixed: the same evaluations always give the same report
BATCH = 1000  # resamples evaluated at once: bounds memory at about BATCH x units x 8 bytes per array

HELD, NOT_HELD, INCONCLUSIVE, NOT_TESTED = "held", "did not hold", "inconclusive", "not tested"
MCNEMAR, PERMUTATION, NO_VARIATION = "exact McNemar", "paired permutation", "no variation"


@dataclass(frozen=True)
class ClusterTotals:
    """Per-unit totals of two checkpoints' paired episodes: rate(A) = sum(num_a) / sum(den_a)."""

    num_a: np.ndarray
    den_a: np.ndarray
    num_b: np.ndarray
    den_b: np.ndarray
    pairs: np.ndarray  # episode pairs per unit

    @property
    def units(self) -> int:
        return len(self.pairs)

    @property
    def episodes(self) -> int:
        return int(self.pairs.sum())

    @property
    def units_repeat(self) -> bool:
        return bool((self.pairs > 1).any())

    def difference(self) -> float:
        return float(ratio_difference(self.num_a, self.den_a, self.num_b, self.den_b))


@dataclass(frozen=True)
class PairedResult:
    """rate(A) - rate(B) with its 95% paired interval and two-sided p-value."""

    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    units: int
    episodes: int
    test: str


def cluster_totals(pairs: Iterable[tuple[Hashable, float, float, float, float]]) -> ClusterTotals:
    """Sum paired episodes `(unit, num_a, den_a, num_b, den_b)` into one row per unit (first-seen order)."""
    index: dict[Hashable, int] = {}
    rows: list[list[float]] = []
    for unit, num_a, den_a, num_b, den_b in pairs:
        if unit not in index:
            index[unit] = len(rows)
            rows.append([0.0, 0.0, 0.0, 0.0, 0.0])
        row = rows[index[unit]]
        for i, value in enumerate((num_a, den_a, num_b, den_b, 1.0)):
            row[i] += float(value)
    table = np.array(rows, dtype=float).reshape(-1, 5)
    return ClusterTotals(*(table[:, i] for i in range(4)), pairs=table[:, 4].astype(int))


def ratio_difference(num_a, den_a, num_b, den_b, axis: int = -1):
    """sum(num_a) / sum(den_a) - sum(num_b) / sum(den_b) along `axis` (vectorised for scipy)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(num_a, axis=axis) / np.sum(den_a, axis=axis) - np.sum(num_b, axis=axis) / np.sum(
            den_b, axis=axis
        )


def wilson_interval(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a proportion k / n; (nan, nan) when n is 0."""
    if n <= 0:
        return float("nan"), float("nan")
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def normal_interval(value: float, se: float, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """value +- z se, clipped to [0, 1]: for a rate whose evaluation reports only a standard error."""
    low, high = stats.norm.interval(confidence, loc=value, scale=se) if se > 0 else (value, value)
    return max(0.0, float(low)), min(1.0, float(high))


def mcnemar_exact_p(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar test: the discordant pairs split 50/50 under no difference."""
    if a_only + b_only == 0:
        return 1.0
    return float(stats.binomtest(int(a_only), int(a_only + b_only), 0.5).pvalue)


def _no_variation(t: ClusterTotals) -> bool:
    """Every unit has the same rate under A and the same under B: every resample gives the same difference."""
    with np.errstate(invalid="ignore", divide="ignore"):
        rate_a, rate_b = t.num_a / t.den_a, t.num_b / t.den_b
    return bool(np.allclose(rate_a, rate_a[0], equal_nan=True) and np.allclose(rate_b, rate_b[0], equal_nan=True))


def paired_bootstrap_interval(
    t: ClusterTotals, confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES, seed: int = SEED
) -> tuple[float, float]:
    """Percentile interval of rate(A) - rate(B), resampling units with both checkpoints' totals together."""
    diff = t.difference()
    if t.units < 2 or _no_variation(t):
        return diff, diff
    result = stats.bootstrap(
        (t.num_a, t.den_a, t.num_b, t.den_b),
        ratio_difference,
        paired=True,
        vectorized=True,
        axis=-1,
        confidence_level=confidence,
        n_resamples=n_resamples,
        batch=BATCH,
        method="percentile",
        random_state=seed,
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_permutation_p(t: ClusterTotals, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> float:
    """Two-sided p-value of rate(A) - rate(B) from swapping A's and B's totals within random units.

    The samples handed to scipy are row indices into the stacked totals (A's units, then B's), so
    a swap moves a unit's numerator and denominator together. Exact when 2^units <= n_resamples.
    """
    if t.units == 0:
        return float("nan")
    num = np.concatenate([t.num_a, t.num_b])
    den = np.concatenate([t.den_a, t.den_b])

    def statistic(rows_a, rows_b, axis=-1):
        return ratio_difference(num[rows_a], den[rows_a], num[rows_b], den[rows_b], axis=axis)

    rows = np.arange(t.units)
    result = stats.permutation_test(
        (rows, rows + t.units),
        statistic,
        permutation_type="samples",
        vectorized=True,
        axis=-1,
        n_resamples=n_resamples,
        batch=BATCH,
        alternative="two-sided",
        random_state=seed,
    )
    return float(min(result.pvalue, 1.0))


def compare_paired(
    t: ClusterTotals,
    binary: bool = False,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> PairedResult:
    """rate(A) - rate(B): paired cluster-bootstrap interval and p-value (McNemar when binary and no unit repeats)."""
    if t.units == 0 or t.den_a.sum() <= 0 or t.den_b.sum() <= 0:
        nan = float("nan")
        return PairedResult(nan, nan, nan, nan, t.units, t.episodes, "no paired episodes")
    diff = t.difference()
    low, high = paired_bootstrap_interval(t, confidence, n_resamples, seed)
    if binary and not t.units_repeat:
        p_value, test = mcnemar_exact_p(int((t.num_a > t.num_b).sum()), int((t.num_b > t.num_a).sum())), MCNEMAR
    else:
        p_value, test = paired_permutation_p(t, n_resamples, seed), PERMUTATION
    if t.units >= 2 and _no_variation(t):
        test += f" ({NO_VARIATION} across units)"
    return PairedResult(diff, low, high, p_value, t.units, t.episodes, test)


def interval_verdict(
    ci_low: float, ci_high: float, paper_sign: int, p_value: float | None = None, alpha: float = ALPHA
) -> str:
    """held / did not hold / inconclusive from the 95% paired interval of a signed difference.

    held: the interval excludes 0 in the paper's direction; did not hold: it excludes 0 in the
    opposite direction; inconclusive otherwise. With a p-value, the test must agree (p < alpha):
    with few discordant units the percentile bootstrap can exclude 0 while the exact test does not.
    """
    if any(x is None or math.isnan(x) for x in (ci_low, ci_high)):
        return NOT_TESTED
    if p_value is not None and not math.isnan(p_value) and p_value >= alpha:
        return INCONCLUSIVE
    if ci_low > 0:
        return HELD if paper_sign > 0 else NOT_HELD
    if ci_high < 0:
        return HELD if paper_sign < 0 else NOT_HELD
    return INCONCLUSIVE
