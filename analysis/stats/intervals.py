"""Intervals and tests for scores measured on a set of images: proportions (Clopper–Pearson), paired
proportions (McNemar's test, Newcombe's interval for the difference), means (t over images, or over photos
when several images are views of one photo) and ratios of sums (jackknife over images or photos).

Images are the unit of resampling. When the images are views of fewer photos (``groups``: the photo of each
image), views of one photo are not independent, so the interval treats photos as the unit: the cluster-robust
standard error of the mean with G - 1 degrees of freedom (G photos), or a jackknife leaving out one photo at
a time. The tests of this module check every method's coverage by simulation on data with a known truth.

The survey's scores (``analysis.measure.scores``) use the second half of this module: the delete-one-group
jackknife, MOVER intervals of differences, and the adjusted Rand index of split-half groupings. There too
images are the unit of resampling: the statistics keep K groups of images (``analysis.stats.GroupedStats``),
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis._core.errors import GhostmapsError
from analysis._core.results import Result, number, plain

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Estimate", "Jackknife", "McNemar", "adjusted_rand", "clopper_pearson", "correlation", "jackknife",
           "mcnemar", "mean_interval", "mover", "paired_difference", "proportion", "ratio_interval", "t_quantile",
           "EXACT_MCNEMAR_BELOW"]

#: McNemar's test is the exact binomial test below this many discordant pairs, the continuity-corrected
#: chi-square test from there on.
EXACT_MCNEMAR_BELOW = 25


@dataclass(frozen=True, eq=False)
class Estimate(Result):
    """A score with its interval: ``value`` in [``low``, ``high``] at ``level``, from ``n`` images (``groups``
    photos when views were grouped), by ``method``. An infinite limit (no interval from one image) is None in
    ``to_dict`` and NaN when read back."""

    value: float
    low: float
    high: float
    n: int
    level: float = 0.95
    method: str = ""
    groups: int | None = None

    _COLUMNS = ("value", "low", "high", "n", "level", "method", "groups")

    def rows(self) -> list[dict[str, Any]]:
        return [self.to_dict()]

    def to_dict(self) -> dict[str, Any]:
        return plain({"value": self.value, "low": self.low, "high": self.high, "n": self.n, "level": self.level,
                      "method": self.method, "groups": self.groups})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        g = data.get("groups")
        return cls(number(data["value"]), number(data["low"]), number(data["high"]), int(data["n"]),
                   float(data["level"]), str(data["method"]), None if g is None else int(g))

    def __str__(self) -> str:
        return f"{self.value:.4g} [{self.low:.4g}, {self.high:.4g}]"


def _check_level(level: float) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise GhostmapsError(f"level must be a confidence level in (0, 1), e.g. 0.95; got {level!r}.")
    return float(level)


def _check_counts(k: int, n: int) -> None:
    if n < 0 or k < 0 or k > n or int(k) != k or int(n) != n:
        raise GhostmapsError(f"need integer counts 0 <= k <= n, got k={k!r}, n={n!r}.")


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson) interval for a binomial proportion k / n: beta quantiles, never below nominal
    coverage. (0, 1) when n = 0."""
    from scipy.stats import beta

    level = _check_level(level)
    _check_counts(k, n)
    if n == 0:
        return 0.0, 1.0
    a = (1 - level) / 2
    low = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return low, high


def _groups(groups: Sequence[Any] | None, n: int) -> np.ndarray | None:
    if groups is None:
        return None
    g = np.asarray(list(groups), dtype=object)
    if g.shape != (n,):
        raise GhostmapsError(f"groups must name one photo per image ({n}), got {g.shape[0]} names.")
    _, codes = np.unique(g.astype(str), return_inverse=True)
    return codes


def _cluster_mean(values: np.ndarray, codes: np.ndarray, level: float) -> tuple[float, float, float, int]:
    """Cluster-robust (CR1) interval for the mean of ``values``: t with G - 1 degrees of freedom."""
    from scipy.stats import t as student

    n = values.size
    g = int(codes.max()) + 1
    mean = float(values.mean())
    sums = np.bincount(codes, weights=values - mean, minlength=g)
    if g < 2:
        return mean, -math.inf, math.inf, g
    se = math.sqrt(g / (g - 1) * float((sums ** 2).sum())) / n
    half = float(student.ppf(0.5 + level / 2, g - 1)) * se
    return mean, mean - half, mean + half, g


def proportion(successes: Any, level: float = 0.95, groups: Sequence[Any] | None = None) -> Estimate:
    """The fraction of true entries of a boolean vector (one per image), with its interval: Clopper–Pearson
    for independent images; with ``groups`` (the photo of each image) the cluster-robust t interval, clipped
    to [0, 1], since views of one photo succeed or fail together; when every view fails (or every view
    succeeds) that interval would have no width, and Clopper–Pearson with one trial per photo is used."""
    level = _check_level(level)
    x = np.asarray(successes, dtype=bool).reshape(-1)
    n, k = x.size, int(x.sum())
    value = k / n if n else math.nan
    codes = _groups(groups, n)
    if codes is None or n == 0:
        low, high = clopper_pearson(k, n, level)
        return Estimate(value, low, high, n, level, "Clopper-Pearson")
    mean, low, high, g = _cluster_mean(x.astype(np.float64), codes, level)
    if k in (0, n):  # no spread to estimate: the exact interval with one trial per photo, not [k/n, k/n]
        low, high = clopper_pearson(0 if k == 0 else g, g, level)
        return Estimate(value, low, high, n, level, f"Clopper-Pearson over {g} photos (every view "
                        f"{'failed' if k == 0 else 'succeeded'})", g)
    return Estimate(value, max(0.0, low), min(1.0, high), n, level, f"cluster-robust t over {g} photos", g)


def mean_interval(values: Any, level: float = 0.95, groups: Sequence[Any] | None = None) -> Estimate:
    """Mean of one value per image with a t interval over images (over photos with ``groups``)."""
    from scipy.stats import t as student

    level = _check_level(level)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0 or not np.all(np.isfinite(v)):
        raise GhostmapsError("mean_interval needs at least one value and only finite values.")
    codes = _groups(groups, v.size)
    if codes is not None:
        mean, low, high, g = _cluster_mean(v, codes, level)
        return Estimate(mean, low, high, v.size, level, f"cluster-robust t over {g} photos", g)
    mean = float(v.mean())
    if v.size < 2:
        return Estimate(mean, -math.inf, math.inf, 1, level, "t over images")
    half = float(student.ppf(0.5 + level / 2, v.size - 1)) * float(v.std(ddof=1)) / math.sqrt(v.size)
    return Estimate(mean, mean - half, mean + half, v.size, level, "t over images")


def ratio_interval(numerator: Any, denominator: Any, level: float = 0.95,
                   groups: Sequence[Any] | None = None) -> Estimate:
    """``sum(numerator) / sum(denominator)`` (e.g. a relative error: squared error over variance, summed over
    images) with a jackknife interval leaving out one image (one photo with ``groups``) at a time, t with
    G - 1 degrees of freedom."""
    from scipy.stats import t as student

    level = _check_level(level)
    a = np.asarray(numerator, dtype=np.float64).reshape(-1)
    b = np.asarray(denominator, dtype=np.float64).reshape(-1)
    if a.shape != b.shape or a.size == 0:
        raise GhostmapsError(f"numerator and denominator must be equal, non-empty vectors; got {a.size} and "
                             f"{b.size} values.")
    codes = _groups(groups, a.size)
    if codes is None:
        codes = np.arange(a.size)
    g = int(codes.max()) + 1
    sa, sb = np.bincount(codes, a, g), np.bincount(codes, b, g)
    total_a, total_b = float(sa.sum()), float(sb.sum())
    value = total_a / total_b if total_b > 0 else math.nan
    method = "jackknife over " + ("images" if groups is None else f"{g} photos")
    if g < 2 or not total_b > 0:
        return Estimate(value, -math.inf, math.inf, a.size, level, method, None if groups is None else g)
    rest_b = total_b - sb
    with np.errstate(divide="ignore", invalid="ignore"):
        loo = np.where(rest_b > 0, (total_a - sa) / rest_b, value)
    se = math.sqrt((g - 1) / g * float(((loo - loo.mean()) ** 2).sum()))
    half = float(student.ppf(0.5 + level / 2, g - 1)) * se
    return Estimate(value, value - half, value + half, a.size, level, method, None if groups is None else g)


@dataclass(frozen=True, eq=False)
class McNemar(Result):
    """McNemar's test of two classifiers on the same images: ``b`` images only the first gets right, ``c``
    only the second; ``p_value`` two-sided; ``method`` "exact binomial" below ``EXACT_MCNEMAR_BELOW``
    discordant images, else "chi-square, continuity-corrected" (``statistic`` is then the chi-square)."""

    b: int
    c: int
    p_value: float
    method: str
    statistic: float | None = None

    _COLUMNS = ("b", "c", "p_value", "method", "statistic")

    def rows(self) -> list[dict[str, Any]]:
        return [self.to_dict()]

    def to_dict(self) -> dict[str, Any]:
        return plain({"b": self.b, "c": self.c, "p_value": self.p_value, "method": self.method,
                      "statistic": self.statistic})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        st = data.get("statistic")
        return cls(int(data["b"]), int(data["c"]), float(data["p_value"]), str(data["method"]),
                   None if st is None else float(st))


def mcnemar(b: int, c: int, exact_below: int = EXACT_MCNEMAR_BELOW) -> McNemar:
    """McNemar's test from the discordant counts ``b`` and ``c``: the exact two-sided binomial test of
    b ~ Binomial(b + c, 1/2) for few discordant pairs, the chi-square (|b - c| - 1)^2 / (b + c) with one
    degree of freedom otherwise."""
    from scipy.stats import binom, chi2

    _check_counts(b, b + c)
    _check_counts(c, b + c)
    n = b + c
    if n == 0:
        return McNemar(b, c, 1.0, "exact binomial")
    if n < exact_below:
        p = min(1.0, 2.0 * float(binom.cdf(min(b, c), n, 0.5)))
        return McNemar(b, c, p, "exact binomial")
    stat = (abs(b - c) - 1) ** 2 / n if abs(b - c) >= 1 else 0.0
    return McNemar(b, c, float(chi2.sf(stat, 1)), "chi-square, continuity-corrected", float(stat))


def _wilson(k: int, n: int, z: float) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def paired_difference(first: Any, second: Any, level: float = 0.95) -> Estimate:
    """Difference ``mean(second) - mean(first)`` of two boolean vectors on the same images (e.g. the converted
    model's correct top-1 minus the original's) with Newcombe's interval for paired proportions (method 10,
    Wilson score limits of each proportion combined with the continuity-corrected phi correlation)."""
    from scipy.stats import norm

    level = _check_level(level)
    x = np.asarray(first, dtype=bool).reshape(-1)
    y = np.asarray(second, dtype=bool).reshape(-1)
    if x.shape != y.shape or x.size == 0:
        raise GhostmapsError(f"paired_difference needs two equal, non-empty vectors; got {x.size} and {y.size}.")
    n = x.size
    n11, n10 = int((x & y).sum()), int((x & ~y).sum())
    n01, n00 = int((~x & y).sum()), int((~x & ~y).sum())
    p1, p2 = (n11 + n10) / n, (n11 + n01) / n
    z = float(norm.ppf(0.5 + level / 2))
    l1, u1 = _wilson(n11 + n10, n, z)
    l2, u2 = _wilson(n11 + n01, n, z)
    denom = (n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00)
    num = n11 * n00 - n10 * n01
    if num > 0:
        num = max(num - n / 2, 0.0)
    phi = num / math.sqrt(denom) if denom > 0 else 0.0
    delta = p2 - p1
    # for second - first: the lower limit uses second's lower and first's upper Wilson distances
    low = delta - math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    high = delta + math.sqrt(max(0.0, (u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2))
    return Estimate(delta, max(-1.0, low), min(1.0, high), n, level, "Newcombe (paired, method 10)")


# -- the delete-one-group jackknife of the survey scores (module docstring) ----------------------------------
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
