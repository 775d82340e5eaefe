"""Small, dependency-free statistics for paired experiments (pure Python, no numpy or scipy).

Used by the acceptance experiment: every arm of a seed shares that seed's data, initialization
and batch order, so arms are compared *paired* by seed: per seed, the relative change of an arm
against the baseline; over seeds, its mean with a Student-t confidence interval (and a paired
bootstrap interval as a cross-check). Rank correlations say how well a predictor orders arms.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Optional, Sequence

__all__ = [
    "ONE_VALUE",
    "Interval",
    "bootstrap_mean_interval",
    "kendall_tau",
    "mean_interval",
    "paired_relative_changes",
    "ranks",
    "spearman",
    "student_t_cdf",
    "student_t_ppf",
]


#: Why one value has no interval (reported in its place).
ONE_VALUE = "not available: one value (one seed) says nothing about the spread; an interval needs two or more"


@dataclass(frozen=True)
class Interval:
    """A mean with a two-sided confidence interval; ``excludes_zero`` marks a change that is not noise.
    From one value there is no interval: ``low`` and ``high`` are ``None`` and ``note`` says why."""

    mean: float
    low: Optional[float]
    high: Optional[float]
    n: int
    confidence: float
    method: str
    note: Optional[str] = None

    @property
    def available(self) -> bool:
        return self.low is not None and self.high is not None

    @property
    def excludes_zero(self) -> bool:
        return self.available and self.n > 1 and (self.low > 0.0 or self.high < 0.0)

    @property
    def half_width(self) -> Optional[float]:
        return (self.high - self.low) / 2.0 if self.available else None


def _check_values(values: Sequence[float], what: str) -> list[float]:
    out = [float(v) for v in values]
    if not out:
        raise ValueError(f"{what}: no values")
    bad = [v for v in out if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{what}: values must be finite, got {bad}")
    return out


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def paired_relative_changes(arm: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """Per pair ``arm_i / baseline_i - 1`` (pairs share a seed); baselines must be positive."""
    arm = _check_values(arm, "arm")
    baseline = _check_values(baseline, "baseline")
    if len(arm) != len(baseline):
        raise ValueError(f"paired values need equal lengths, got {len(arm)} arm and {len(baseline)} baseline values")
    if any(b <= 0 for b in baseline):
        raise ValueError(f"baseline values must be > 0 for a relative change, got {baseline}")
    return [a / b - 1.0 for a, b in zip(arm, baseline)]


# --- Student t distribution (regularized incomplete beta, continued fraction) --------------


def _betacf(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _regularized_beta(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df!r}")
    tail = 0.5 * _regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def student_t_ppf(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t (bisection on the CDF; |error| < 1e-10)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {q!r}")
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -student_t_ppf(1.0 - q, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < q:
        high *= 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if student_t_cdf(mid, df) < q:
            low = mid
        else:
            high = mid
        if high - low < 1e-12:
            break
    return (low + high) / 2.0


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean and Student-t interval ``mean +- t_{(1+c)/2, n-1} * s / sqrt(n)`` (n = 1: no interval, ``low`` and
    ``high`` None with the reason in ``note``; one pair says nothing about noise)."""
    values = _check_values(values, "mean_interval")
    _check_confidence(confidence)
    n = len(values)
    mean = math.fsum(values) / n
    if n == 1:
        return Interval(mean, None, None, 1, confidence, "t", ONE_VALUE)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = student_t_ppf((1.0 + confidence) / 2.0, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, confidence, "t")


def bootstrap_mean_interval(
    values: Sequence[float], confidence: float = 0.95, resamples: int = 10000, seed: int = 0
) -> Interval:
    """Percentile bootstrap interval of the mean over pairs (resampling whole pairs, i.e. seeds)."""
    values = _check_values(values, "bootstrap_mean_interval")
    _check_confidence(confidence)
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be an int >= 1, got {resamples!r}")
    n = len(values)
    mean = math.fsum(values) / n
    if n == 1:  # every resample is the value itself: a zero-width "interval" that means nothing
        return Interval(mean, None, None, 1, confidence, "bootstrap", ONE_VALUE)
    rng = random.Random(seed)
    means = sorted(math.fsum(rng.choice(values) for _ in range(n)) / n for _ in range(resamples))
    tail = (1.0 - confidence) / 2.0
    low = means[min(resamples - 1, max(0, int(math.floor(tail * resamples))))]
    high = means[min(resamples - 1, max(0, int(math.ceil((1.0 - tail) * resamples)) - 1))]
    return Interval(mean, low, high, n, confidence, "bootstrap")


# --- rank correlation ------------------------------------------------------------------------


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties get their average rank."""
    values = _check_values(values, "ranks")
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return out


def _pearson(x: list[float], y: list[float]) -> Optional[float]:
    mx, my = math.fsum(x) / len(x), math.fsum(y) / len(y)
    sxy = math.fsum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = math.fsum((a - mx) ** 2 for a in x)
    syy = math.fsum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def spearman(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    """Spearman's rank correlation (Pearson on average ranks); None when either side is constant."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"spearman needs two equal-length sequences of >= 2 values, got {len(x)} and {len(y)}")
    return _pearson(ranks(x), ranks(y))


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    """Kendall's tau-b; None when either side is constant."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"kendall_tau needs two equal-length sequences of >= 2 values, got {len(x)} and {len(y)}")
    x, y = _check_values(x, "kendall_tau x"), _check_values(y, "kendall_tau y")
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return None if denominator == 0 else (concordant - discordant) / denominator
