"""The delete-one-group jackknife, MOVER intervals of differences, and the adjusted Rand index of split-half
groupings: the intervals of the survey's scores (``analysis.measure.scores``).

Images are the unit of resampling: the statistics keep K groups of images (``analysis.stats.GroupedStats``),
and replicate k recomputes a score without group k. With θ̂ the estimate on all images, θ₋ₖ the replicates,
n images and mₖ in group k (hₖ = n/mₖ; the weighted delete-a-group jackknife of Busing, Meijer & van der
Leeden 1999, the plain one when the groups are equal):

* bias-corrected estimate θ_J = K θ̂ − Σₖ (1 − mₖ/n) θ₋ₖ, which removes the O(1/n) bias of a smooth score
  (e.g. the noise floor of a mean squared similarity);
* variance v = (1/K) Σₖ (τₖ − θ_J)² / (hₖ − 1), pseudo-values τₖ = hₖ θ̂ − (hₖ − 1) θ₋ₖ;
* interval θ_J ± t_{K−1, (1+level)/2} √v (``Jackknife.low``/``high``), centred on the printed estimate.

A mean squared similarity is a sum of squares: its error grows with its value (in the simulation the
jackknife error and standard error correlate at 0.73), so a symmetric interval misses on one side. Its
interval is built for log(θ + b), with b = θ̂ − θ_J ≥ 0 the noise floor the bias correction removed, and mapped
back (``Jackknife.log_interval``): asymmetric, longer above, and still around the estimate.

An excess ``observed − baseline`` uses the same image groups for both (the paired design) and combines their
two intervals by MOVER (Zou & Donner 2008: the method of variance estimates recovery), with the correlation of
the two statistics' replicates (``mover``): it keeps each interval's asymmetry and cancels what the two share
(the same images). A monotone score f(θ) gets the interval of θ mapped through f. Coverage is checked by
simulation (``tests/measure/test_intervals.py``, ``benchmarks/interval_coverage.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from analysis._core.errors import GhostmapsError

__all__ = ["Jackknife", "adjusted_rand", "correlation", "jackknife", "mover", "t_quantile"]


@lru_cache(maxsize=256)
def t_quantile(level: float, dof: int) -> float:
    """The (1 + level)/2 quantile of Student's t with ``dof`` degrees of freedom (cached: a survey asks for the
    same few hundreds of times)."""
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, max(1, dof)))


@dataclass(frozen=True)
class Jackknife:
    """A jackknifed statistic: the bias-corrected estimate, its standard error and the t interval."""

    estimate: float
    se: float
    low: float
    high: float
    groups: int
    plain: float = 0.0
    level: float = 0.95

    def log_interval(self) -> tuple[float, float, float]:
        """(estimate, low, high) with the interval built for log(θ + b), b = max(θ̂ − θ_J, 0) (module docstring);
        the symmetric interval where θ_J + b ≤ 0."""
        offset = max(self.plain - self.estimate, 0.0)
        x = self.estimate + offset
        if x <= 0 or self.se == 0:
            return self.estimate, self.low, self.high
        spread = t_quantile(self.level, self.groups - 1) * self.se / x
        return self.estimate, x * math.exp(-spread) - offset, x * math.exp(spread) - offset

    def mapped(self, f: object, lower: float = -math.inf, upper: float = math.inf) -> tuple[float, float, float]:
        """(f(estimate), low, high) for a monotone f, endpoints ordered and clipped to [lower, upper]."""
        values = [min(max(float(f(v)), lower), upper) for v in (self.estimate, self.low, self.high)]  # type: ignore[operator]
        return values[0], min(values[1:]), max(values[1:])


def jackknife(estimate: float, replicates: Sequence[float], sizes: Sequence[float], level: float = 0.95,
              bias_correct: bool = True) -> Jackknife:
    """Delete-one-group jackknife of one statistic (formulas: module docstring).

    Args:
        estimate: θ̂ on all images.
        replicates: θ₋ₖ, one per filled group (at least two).
        sizes: the groups' sizes mₖ (images), in the same order.
        level: confidence level of the interval.
        bias_correct: centre on θ_J (default) or on θ̂.
    """
    reps = np.asarray(replicates, dtype=np.float64)
    m = np.asarray(sizes, dtype=np.float64)
    k = reps.size
    if k < 2 or m.shape != reps.shape or (m <= 0).any():
        raise GhostmapsError(f"a jackknife needs at least two groups with one size each, got {k} replicates and "
                             f"sizes {m.tolist()}.")
    n = m.sum()
    h = n / m
    corrected = k * estimate - float(((1 - m / n) * reps).sum())
    pseudo = h * estimate - (h - 1) * reps
    var = float(((pseudo - corrected) ** 2 / (h - 1)).sum() / k)
    centre = corrected if bias_correct else float(estimate)
    se = math.sqrt(max(var, 0.0))
    half = t_quantile(level, k - 1) * se
    return Jackknife(float(centre), se, float(centre - half), float(centre + half), k, float(estimate), level)


def mover(a: tuple[float, float, float], b: tuple[float, float, float], correlation: float
          ) -> tuple[float, float, float]:
    """The interval of a − b from the intervals (estimate, low, high) of a and b and the correlation of their
    estimates (MOVER, Zou & Donner 2008). Returns (a − b, low, high); the difference is always inside."""
    (ea, la, ha), (eb, lb, hb) = a, b
    r = 0.0 if not math.isfinite(correlation) else max(-1.0, min(1.0, correlation))
    diff = ea - eb
    below = (ea - la) ** 2 + (hb - eb) ** 2 - 2 * r * (ea - la) * (hb - eb)
    above = (ha - ea) ** 2 + (eb - lb) ** 2 - 2 * r * (ha - ea) * (eb - lb)
    return diff, diff - math.sqrt(max(below, 0.0)), diff + math.sqrt(max(above, 0.0))


def correlation(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation of two replicate series (0 when either is constant)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2 or x.shape != y.shape:
        return 0.0
    sx, sy = x.std(), y.std()
    if sx == 0 or sy == 0:
        return 0.0
    return float(((x - x.mean()) * (y - y.mean())).mean() / (sx * sy))


def adjusted_rand(a: Sequence[int], b: Sequence[int]) -> float:
    """Adjusted Rand index of two labellings of the same channels (1: identical partitions, ≈ 0: chance).

    scikit-learn's ``adjusted_rand_score`` from the pair confusion counts, in exact integer arithmetic (the
    same value, without its input validation, which cost more than the index)."""
    if len(a) != len(b):
        raise GhostmapsError(f"two labellings of different lengths ({len(a)} and {len(b)}).")
    if len(a) < 2:
        return 1.0
    _, x = np.unique(np.asarray(a), return_inverse=True)
    _, y = np.unique(np.asarray(b), return_inverse=True)
    n = len(a)
    joint = np.bincount(x.ravel().astype(np.int64) * (int(y.max()) + 1) + y.ravel())
    squares = int((joint.astype(np.int64) ** 2).sum())
    rows = int((np.bincount(x.ravel()).astype(np.int64) ** 2).sum())
    cols = int((np.bincount(y.ravel()).astype(np.int64) ** 2).sum())
    tp, fp, fn = squares - n, cols - squares, rows - squares
    tn = n * n - fp - fn - squares
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))
