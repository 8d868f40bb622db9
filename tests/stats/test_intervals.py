"""Intervals and tests of analysis.stats.intervals: against scipy, by hand, and by simulated coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from analysis import GhostmapsError
from analysis.stats.intervals import (
    EXACT_MCNEMAR_BELOW,
    clopper_pearson,
    mcnemar,
    mean_interval,
    paired_difference,
    proportion,
    ratio_interval,
)


@pytest.mark.parametrize(("k", "n"), [(0, 7), (6, 7), (7, 7), (3, 10), (50, 256), (250, 256)])
def test_clopper_pearson_against_scipy(k, n):
    low, high = clopper_pearson(k, n)
    ref = stats.binomtest(k, n).proportion_ci(0.95, method="exact")
    assert low == pytest.approx(ref.low, abs=1e-10) and high == pytest.approx(ref.high, abs=1e-10)
    # and against the beta quantiles written out
    lo_b = 0.0 if k == 0 else stats.beta(k, n - k + 1).ppf(0.025)
    hi_b = 1.0 if k == n else stats.beta(k + 1, n - k).ppf(0.975)
    assert (low, high) == pytest.approx((lo_b, hi_b), abs=1e-12)
    # the review's numbers: 0/7 -> [0, 41%], 6/7 -> [42%, 99.6%]
    if (k, n) == (0, 7):
        assert high == pytest.approx(0.41, abs=0.005)
    if (k, n) == (6, 7):
        assert (low, high) == pytest.approx((0.42, 0.996), abs=0.005)


def test_mcnemar_on_hand_made_predictions_against_scipy():
    truth = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9] * 4)
    first = truth.copy()
    second = truth.copy()
    first[[0, 1, 2]] = 99  # only the second gets these right: c = 3
    second[[3, 4, 5, 6, 7, 8, 9, 10, 11]] = 99  # only the first gets these right: b = 9
    second[[0]] = 99  # both wrong on image 0
    ok1, ok2 = first == truth, second == truth
    b, c = int((ok1 & ~ok2).sum()), int((~ok1 & ok2).sum())
    assert (b, c) == (9, 2)
    res = mcnemar(b, c)
    assert res.method == "exact binomial"
    assert res.p_value == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-12)
    for b, c in [(0, 0), (0, 5), (12, 12), (3, 20)]:
        assert mcnemar(b, c).p_value == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue if b + c else 1.0)
    big = mcnemar(40, 20)  # beyond the exact range: continuity-corrected chi-square
    assert 40 + 20 >= EXACT_MCNEMAR_BELOW and big.method.startswith("chi-square")
    assert big.statistic == pytest.approx((abs(40 - 20) - 1) ** 2 / 60)
    assert big.p_value == pytest.approx(stats.chi2(1).sf(19**2 / 60))
    with pytest.raises(GhostmapsError):
        mcnemar(-1, 3)


def test_paired_difference_matches_newcombe_and_covers():
    # many images: Newcombe's interval meets the Wald interval with McNemar's variance (an independent formula)
    n11, n10, n01, n00 = 6000, 1200, 700, 2100
    n = n11 + n10 + n01 + n00
    first = np.array([1] * n11 + [1] * n10 + [0] * n01 + [0] * n00, bool)
    second = np.array([1] * n11 + [0] * n10 + [1] * n01 + [0] * n00, bool)
    est = paired_difference(first, second)
    delta = (n01 - n10) / n
    half = stats.norm.ppf(0.975) * math.sqrt((n10 + n01) / n**2 - (n01 - n10) ** 2 / n**3)
    assert est.value == pytest.approx(delta)
    assert (est.low, est.high) == pytest.approx((delta - half, delta + half), abs=2e-4)
    # coverage by simulation: correlated pairs with a known difference
    rng = np.random.default_rng(0)
    n, reps, hits = 80, 1500, 0
    p = np.array([0.55, 0.15, 0.05, 0.25])  # both right, only first, only second, neither
    truth = (p[0] + p[2]) - (p[0] + p[1])
    for _ in range(reps):
        cell = rng.choice(4, size=n, p=p)
        x, y = np.isin(cell, (0, 1)), np.isin(cell, (0, 2))
        e = paired_difference(x, y)
        hits += e.low <= truth <= e.high
    assert 0.93 <= hits / reps <= 0.98


def test_proportion_and_mean_intervals_cover_with_and_without_photos():
    rng = np.random.default_rng(1)
    reps = 1500
    # independent images: Clopper-Pearson covers at least nominally
    hits = 0
    for _ in range(reps):
        e = proportion(rng.random(60) < 0.8)
        hits += e.low <= 0.8 <= e.high
    assert hits / reps >= 0.94
    # 30 photos x 8 views with a photo effect: the photo-level interval covers, the naive one does not
    g, v = 30, 8
    groups = np.repeat(np.arange(g), v)
    naive = clustered = 0
    for _ in range(reps):
        x = rng.normal(0, 1, g)[groups] + rng.normal(0, 0.5, g * v)
        naive += bool(mean_interval(x).low <= 0 <= mean_interval(x).high)
        e = mean_interval(x, groups=groups)
        clustered += e.low <= 0 <= e.high
    assert 0.93 <= clustered / reps <= 0.975
    assert naive / reps < 0.75  # the baseline that ignores photos fails, as it should
    assert e.groups == g and "30 photos" in e.method


def test_ratio_interval_covers_and_matches_direct_sums():
    rng = np.random.default_rng(2)
    a, b = rng.random(20), rng.random(20) + 1
    est = ratio_interval(a, b)
    assert est.value == pytest.approx(a.sum() / b.sum())
    loo = np.array([(a.sum() - a[i]) / (b.sum() - b[i]) for i in range(20)])
    se = math.sqrt(19 / 20 * ((loo - loo.mean()) ** 2).sum())
    assert est.high - est.value == pytest.approx(stats.t(19).ppf(0.975) * se)
    reps, hits = 1500, 0
    for _ in range(reps):  # per-image squared errors and variances; truth = E[num] / E[den] = 0.3
        den = rng.gamma(4.0, 1.0, 25)
        num = 0.3 * den * rng.gamma(5.0, 0.2, 25)
        e = ratio_interval(num, den)
        hits += e.low <= 0.3 <= e.high
    assert 0.92 <= hits / reps <= 0.975


def test_bad_input():
    with pytest.raises(GhostmapsError, match="level"):
        clopper_pearson(1, 2, level=1.5)
    with pytest.raises(GhostmapsError, match="counts"):
        clopper_pearson(3, 2)
    with pytest.raises(GhostmapsError, match="groups"):
        proportion([True, False], groups=["a"])
    with pytest.raises(GhostmapsError):
        paired_difference([True], [True, False])


@pytest.mark.parametrize("outcome", [False, True])
def test_proportion_over_photos_is_never_a_point_when_every_view_agrees(outcome):
    # 64 views of 8 photos that all fail (or all succeed): the cluster-robust t interval has no spread to
    # estimate, so the interval is the exact one with one trial per photo: beta quantiles computed here.
    from scipy.stats import beta

    groups = [f"photo{i % 8}" for i in range(64)]
    e = proportion([outcome] * 64, groups=groups)
    bound = float(beta.ppf(0.975, 1, 8)) if not outcome else float(beta.ppf(0.025, 8, 1))
    assert e.value == float(outcome)
    if outcome:
        assert e.low == pytest.approx(bound) and e.high == 1.0
    else:
        assert e.low == 0.0 and e.high == pytest.approx(bound)
    assert e.high - e.low > 0.3 and "Clopper-Pearson over 8 photos" in e.method


def test_proportion_over_photos_is_korn_graubard_by_hand():
    # 4 photos x 5 views, successes 3, 1, 0, 2: n_eff from the cluster-robust variance written out per photo
    views = [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 0, 0, 0]]
    x = [bool(v) for photo in views for v in photo]
    groups = [g for g in range(4) for _ in range(5)]
    e = proportion(x, groups=groups)
    n, g, p = 20, 4, 6 / 20
    variance = g / (g - 1) * sum((sum(photo) - 5 * p) ** 2 for photo in views) / n ** 2
    n_eff = min(n, p * (1 - p) / variance) * (stats.t(n - 1).ppf(0.975) / stats.t(g - 1).ppf(0.975)) ** 2
    ref = (stats.beta(p * n_eff, n_eff - p * n_eff + 1).ppf(0.025),
           stats.beta(p * n_eff + 1, n_eff - p * n_eff).ppf(0.975))
    assert e.value == p and e.low == pytest.approx(ref[0]) and e.high == pytest.approx(ref[1])
    assert "Korn-Graubard over 4 photos" in e.method and e.groups == 4


def _cluster_t(x: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """The cluster-robust t interval that ``proportion`` used before (written out here), clipped to [0, 1]."""
    g, n = groups.max() + 1, x.size
    p = x.mean()
    se = math.sqrt(g / (g - 1) * (np.bincount(groups, x - p) ** 2).sum()) / n
    half = stats.t(g - 1).ppf(0.975) * se
    return max(0.0, p - half), min(1.0, p + half)


@pytest.mark.parametrize(("p", "concentration", "at_least"), [(0.1, 20.0, 0.93), (0.9, 20.0, 0.93), (0.5, 2.0, 0.93),
                                                              (0.1, 2.0, 0.88)])
def test_proportion_over_eight_photos_covers_near_the_edges(p, concentration, at_least):
    # 8 photos x 32 views (a verification's evaluation set); each photo's rate drawn from a beta with mean p:
    # views of one photo succeed together. The true proportion is p.
    rng = np.random.default_rng(3)
    g, v, reps = 8, 32, 1000
    groups = np.repeat(np.arange(g), v)
    hits = old = 0
    for _ in range(reps):
        rates = rng.beta(p * concentration, (1 - p) * concentration, g)
        x = rng.random(g * v) < rates[groups]
        e = proportion(x, groups=groups)
        hits += e.low <= p <= e.high
        assert e.low <= e.value <= e.high  # the printed estimate is inside its own interval
        if 0 < x.sum() < x.size:
            lo, hi = _cluster_t(x.astype(float), groups)
            old += lo <= p <= hi
        else:
            old += 1  # both methods give Clopper-Pearson over photos there
    assert hits / reps >= at_least
    if concentration == 2.0 and p == 0.1:
        assert old / reps < 0.87  # the interval it replaced fails here, as measured before the change


def test_mean_over_eight_photos_covers():
    # the evaluation set's shape: 8 photos x 32 views, a normal photo effect larger than the view noise
    rng = np.random.default_rng(4)
    g, v, reps = 8, 32, 1500
    groups = np.repeat(np.arange(g), v)
    hits = naive = 0
    for _ in range(reps):
        x = rng.normal(0, 1, g)[groups] + rng.normal(0, 0.5, g * v)
        e = mean_interval(x, groups=groups)
        hits += e.low <= 0 <= e.high
        n = mean_interval(x)
        naive += n.low <= 0 <= n.high
    assert 0.93 <= hits / reps <= 0.975
    assert naive / reps < 0.5  # views taken as independent: far too narrow


def test_mean_on_the_log_scale_by_hand_and_covers_skewed_photo_effects():
    x = np.array([0.2, 0.5, 1.0, 3.0])
    e = mean_interval(x, log=True)
    se = x.std(ddof=1) / 2
    ratio = math.exp(stats.t(3).ppf(0.975) * se / x.mean())
    assert e.low == pytest.approx(x.mean() / ratio) and e.high == pytest.approx(x.mean() * ratio)
    assert 0 < e.low < e.value < e.high and "log scale" in e.method
    assert mean_interval(np.zeros(5), log=True).high == 0.0
    with pytest.raises(GhostmapsError, match="non-negative"):
        mean_interval([-0.1, 1.0], log=True)
    # 8 photos x 32 views, exponential photo effects (one photo far worse than the rest, as a KL can be)
    rng = np.random.default_rng(5)
    g, v, reps = 8, 32, 2000
    groups = np.repeat(np.arange(g), v)
    on_log = symmetric = 0
    for _ in range(reps):
        x = rng.exponential(1.0, g)[groups] * rng.gamma(8.0, 1 / 8, g * v)  # true mean 1
        a, b = mean_interval(x, groups=groups, log=True), mean_interval(x, groups=groups)
        on_log += a.low <= 1.0 <= a.high
        symmetric += b.low <= 1.0 <= b.high
    assert on_log / reps >= 0.92
    assert symmetric / reps < 0.90  # the symmetric interval runs short here


def test_proportion_over_photos_caps_before_the_df_scaling_and_one_photo_has_no_interval():
    # 2 agreeing views on 2 of 8 photos x 32: the raw n_eff is above n, so the cap (n = 256) comes first
    x = np.zeros(256, dtype=bool)
    x[[5, 40]] = True
    groups = np.repeat(np.arange(8), 32)
    p, n = 2 / 256, 256
    variance = 8 / 7 * (np.bincount(groups, x - p) ** 2).sum() / n ** 2
    assert p * (1 - p) / variance > n
    n_eff = n * (stats.t(n - 1).ppf(0.975) / stats.t(7).ppf(0.975)) ** 2
    e = proportion(x, groups=groups)
    assert e.low == pytest.approx(stats.beta(p * n_eff, n_eff - p * n_eff + 1).ppf(0.025))
    assert e.high == pytest.approx(stats.beta(p * n_eff + 1, n_eff - p * n_eff).ppf(0.975))
    one = proportion([True] + [False] * 9, groups=["a"] * 10)
    assert (one.low, one.high) == (0.0, 1.0) and one.low <= one.value <= one.high and "one photo" in one.method
