"""Paired statistics on constructed per-hand results: known p-values, Wilson intervals, verdicts,
and why the hand, not the episode, is the resampling unit."""

from __future__ import annotations

import math

import pytest
from scipy.stats import fisher_exact

from sftvsrl.stats import (
    HELD,
    INCONCLUSIVE,
    MCNEMAR,
    NOT_HELD,
    NOT_TESTED,
    PERMUTATION,
    cluster_totals,
    compare_paired,
    interval_verdict,
    mcnemar_exact_p,
    paired_bootstrap_interval,
    ratio_difference,
    wilson_interval,
)


def binary_pairs(outcomes: list[tuple[int, int]], hand=lambda i: i):
    """(hand, success A, 1, success B, 1) per episode; by default every episode its own hand."""
    return [(hand(i), a, 1, b, 1) for i, (a, b) in enumerate(outcomes)]


def test_exact_mcnemar_on_ten_discordant_pairs():
    assert mcnemar_exact_p(9, 1) == pytest.approx(0.021484375, abs=1e-12)
    assert mcnemar_exact_p(0, 0) == 1.0
    # the same through the paired comparison: 20 concordant pairs do not change it
    outcomes = [(1, 0)] * 9 + [(0, 1)] + [(1, 1)] * 10 + [(0, 0)] * 10
    result = compare_paired(cluster_totals(binary_pairs(outcomes)), binary=True)
    assert result.test == MCNEMAR
    assert result.p_value == pytest.approx(0.021484375, abs=1e-12)
    assert result.diff == pytest.approx(8 / 30)
    assert (result.units, result.episodes) == (30, 30)


def test_paired_test_sees_what_two_separate_rates_cannot():
    """A solves every hand B solves and 10 more: 50% vs 40% of 100 hands."""
    outcomes = [(1, 1)] * 40 + [(1, 0)] * 10 + [(0, 0)] * 50
    result = compare_paired(cluster_totals(binary_pairs(outcomes)), binary=True)
    assert result.p_value == pytest.approx(2 * 0.5**10)
    assert result.ci_low > 0
    assert interval_verdict(result.ci_low, result.ci_high, +1, result.p_value) == HELD
    # unpaired, the same two rates overlap and Fisher's exact test sees nothing
    a_low, _ = wilson_interval(50, 100)
    _, b_high = wilson_interval(40, 100)
    assert a_low < b_high
    assert fisher_exact([[50, 50], [40, 60]]).pvalue > 0.05


def test_wilson_interval():
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and 0 < high < 0.2
    low, high = wilson_interval(20, 20)
    assert high == 1.0 and 0.8 < low < 1
    assert wilson_interval(5, 20) == (pytest.approx(0.1119, abs=1e-4), pytest.approx(0.4687, abs=1e-4))
    assert all(math.isnan(x) for x in wilson_interval(0, 0))  # no episodes


@pytest.mark.parametrize(
    ("outcomes", "paper_sign", "expected"),
    [
        ([(1, 0)] * 30 + [(0, 0)] * 30, +1, HELD),  # A above B, as the paper says
        ([(1, 0)] * 30 + [(0, 0)] * 30, -1, NOT_HELD),  # A above B, the paper says below
        ([(0, 1)] * 30 + [(1, 1)] * 30, -1, HELD),
        ([(1, 0)] * 3 + [(0, 1)] * 3 + [(0, 0)] * 54, +1, INCONCLUSIVE),  # as many hands each way
        ([(0, 0)] * 60, +1, INCONCLUSIVE),  # both at 0%: the interval is [0, 0]
    ],
)
def test_verdict_on_constructed_hands(outcomes, paper_sign, expected):
    r = compare_paired(cluster_totals(binary_pairs(outcomes)), binary=True)
    assert interval_verdict(r.ci_low, r.ci_high, paper_sign, r.p_value) == expected


def test_verdict_rule_on_intervals():
    assert interval_verdict(0.01, 0.2, +1) == HELD
    assert interval_verdict(-0.2, -0.01, -1) == HELD
    assert interval_verdict(-0.2, -0.01, +1) == NOT_HELD
    assert interval_verdict(-0.01, 0.2, +1) == INCONCLUSIVE
    assert interval_verdict(0.0, 0.0, +1) == INCONCLUSIVE
    assert interval_verdict(0.01, 0.2, +1, p_value=0.125) == INCONCLUSIVE  # the exact test must agree
    assert interval_verdict(float("nan"), float("nan"), +1) == NOT_TESTED


def test_few_discordant_hands_need_the_exact_test_to_agree():
    """4 hands gained, none lost, of 200: the percentile bootstrap excludes 0, exact McNemar gives 0.125."""
    r = compare_paired(cluster_totals(binary_pairs([(1, 0)] * 4 + [(0, 0)] * 196)), binary=True)
    assert r.ci_low > 0 and r.p_value == pytest.approx(0.125)
    assert interval_verdict(r.ci_low, r.ci_high, +1, r.p_value) == INCONCLUSIVE


def test_no_variation_gives_a_point_interval():
    """Every hand solved by A and by no B: nothing to resample, the interval is [d, d]."""
    r = compare_paired(cluster_totals(binary_pairs([(1, 0)] * 20)), binary=True)
    assert (r.diff, r.ci_low, r.ci_high) == (1.0, 1.0, 1.0)
    assert r.p_value == pytest.approx(2 * 0.5**20)


def test_cluster_bootstrap_is_wider_when_hands_repeat():
    """10 hands played 10 times each, the outcome set by the hand: 10 units of evidence, not 100."""
    outcomes = [(int(h < 6), int(h < 3)) for h in range(10) for _ in range(10)]
    by_hand = cluster_totals(binary_pairs(outcomes, hand=lambda i: i // 10))
    by_episode = cluster_totals(binary_pairs(outcomes))
    assert (by_hand.units, by_hand.episodes, by_episode.units) == (10, 100, 100)
    low_h, high_h = paired_bootstrap_interval(by_hand)
    low_e, high_e = paired_bootstrap_interval(by_episode)
    assert high_h - low_h > 1.5 * (high_e - low_e)
    clustered = compare_paired(by_hand, binary=True)
    assert clustered.test == PERMUTATION  # hands repeat: McNemar's independence fails
    assert clustered.p_value > 0.1 > compare_paired(by_episode, binary=True).p_value


def test_ratio_metrics_resample_numerator_and_denominator_together():
    # rule memorisation: memorised attempts / OOD attempts per hand, for A and B
    pairs = [("h1", 2, 4, 0, 2), ("h2", 1, 1, 0, 3), ("h1", 1, 2, 1, 5), ("h3", 0, 2, 0, 2)]
    t = cluster_totals(pairs)
    assert t.units == 3 and list(t.pairs) == [2, 1, 1]
    assert list(t.num_a) == [3, 1, 0] and list(t.den_b) == [7, 3, 2]
    assert ratio_difference(t.num_a, t.den_a, t.num_b, t.den_b) == pytest.approx(4 / 9 - 1 / 12)
    same = compare_paired(cluster_totals([(h, a, b, a, b) for h, a, b, _, _ in pairs]))
    assert same.diff == 0 and same.p_value == 1.0
    assert same.ci_low <= 0 <= same.ci_high


def test_results_are_reproducible():
    outcomes = [(1, 0)] * 7 + [(0, 1)] * 2 + [(1, 1)] * 5 + [(0, 0)] * 16
    pairs = binary_pairs(outcomes, hand=lambda i: i // 2)
    assert compare_paired(cluster_totals(pairs), binary=True) == compare_paired(cluster_totals(pairs), binary=True)
