"""The experiment's statistics on hand-built cases with known answers."""

from __future__ import annotations

import math

import pytest

from specforge_dpace import stats


@pytest.mark.parametrize(
    "df,quantile",
    # two-sided 95 % critical values of Student's t (standard tables)
    [(1, 12.7062047), (2, 4.3026527), (4, 2.7764451), (9, 2.2621572), (29, 2.0452296), (1000, 1.9623391)],
)
def test_t_quantiles_match_the_tables(df, quantile):
    assert stats.student_t_ppf(0.975, df) == pytest.approx(quantile, abs=1e-6)
    assert stats.student_t_ppf(0.025, df) == pytest.approx(-quantile, abs=1e-6)
    assert stats.student_t_cdf(quantile, df) == pytest.approx(0.975, abs=1e-7)  # table values have 8 digits


def test_a_known_paired_difference_is_recovered_exactly():
    baseline = [2.0, 2.5, 3.0, 2.2, 2.8]
    arm = [b * 1.1 for b in baseline]  # +10 % on every seed
    changes = stats.paired_relative_changes(arm, baseline)
    interval = stats.mean_interval(changes)
    assert interval.mean == pytest.approx(0.1)
    assert interval.low == pytest.approx(0.1) and interval.high == pytest.approx(0.1)
    assert interval.excludes_zero


def test_a_constant_arm_has_zero_change_and_does_not_exclude_zero():
    baseline = [2.0, 2.5, 3.0]
    interval = stats.mean_interval(stats.paired_relative_changes(baseline, baseline))
    assert (interval.mean, interval.low, interval.high) == (0.0, 0.0, 0.0)
    assert not interval.excludes_zero


def test_t_interval_by_hand():
    values = [0.05, 0.15, -0.02, 0.10, 0.07]
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = 2.7764451 * sd / math.sqrt(n)
    interval = stats.mean_interval(values)
    assert interval.mean == pytest.approx(mean)
    assert interval.low == pytest.approx(mean - half, abs=1e-7) and interval.high == pytest.approx(
        mean + half, abs=1e-7
    )
    assert interval.excludes_zero is (mean - half > 0)


def test_noisy_changes_straddling_zero_do_not_exclude_zero():
    interval = stats.mean_interval([0.2, -0.15, 0.05, -0.1, 0.12])
    assert interval.low < 0 < interval.high and not interval.excludes_zero


def test_one_seed_says_nothing_about_noise():
    for interval in (stats.mean_interval([0.3]), stats.bootstrap_mean_interval([0.3], resamples=50)):
        assert interval.mean == 0.3 and interval.low is None and interval.high is None  # not a zero-width interval
        assert not interval.available and not interval.excludes_zero and interval.half_width is None
        assert interval.note == stats.ONE_VALUE and "one seed" in interval.note


def test_bootstrap_brackets_the_mean_and_is_reproducible():
    values = [0.05, 0.15, -0.02, 0.10, 0.07]
    a = stats.bootstrap_mean_interval(values, resamples=2000, seed=1)
    b = stats.bootstrap_mean_interval(values, resamples=2000, seed=1)
    assert a == b
    assert min(values) <= a.low <= a.mean <= a.high <= max(values)
    constant = stats.bootstrap_mean_interval([0.1] * 4, resamples=100)
    assert constant.low == pytest.approx(0.1) and constant.high == pytest.approx(0.1)


def test_rank_correlations():
    assert stats.ranks([10, 30, 20, 20]) == [1.0, 4.0, 2.5, 2.5]
    assert stats.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert stats.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert stats.spearman([1, 2, 3], [5, 5, 5]) is None
    assert stats.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # Spearman by the textbook formula 1 - 6 sum d^2 / (n (n^2 - 1)) (no ties)
    x, y = [3, 1, 4, 2, 5], [2, 1, 5, 3, 4]
    d2 = sum((a - b) ** 2 for a, b in zip(stats.ranks(x), stats.ranks(y)))
    assert stats.spearman(x, y) == pytest.approx(1 - 6 * d2 / (5 * 24))


@pytest.mark.parametrize(
    "call,error",
    [
        (lambda: stats.paired_relative_changes([1.0], [1.0, 2.0]), "equal lengths"),
        (lambda: stats.paired_relative_changes([1.0], [0.0]), "must be > 0"),
        (lambda: stats.mean_interval([]), "no values"),
        (lambda: stats.mean_interval([1.0, float("nan")]), "must be finite"),
        (lambda: stats.mean_interval([1.0, 2.0], confidence=1.0), r"confidence must be in \(0, 1\)"),
        (lambda: stats.bootstrap_mean_interval([1.0], resamples=0), "resamples must be an int >= 1"),
        (lambda: stats.spearman([1.0], [1.0]), ">= 2 values"),
    ],
)
def test_bad_input_is_refused_by_name(call, error):
    with pytest.raises(ValueError, match=error):
        call()
