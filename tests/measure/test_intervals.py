"""The jackknife (formula, fast replicates) and the coverage of the survey's intervals on simulated data with a
known population (a small version of benchmarks/interval_coverage.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import t as student_t

from analysis import GhostmapsError
from analysis.measure.replicates import about_centre, msq_replicates
from analysis.measure.scores import redundancy
from analysis.measure.synthetic import Population
from analysis.stats import GroupedStats, block_size
from analysis.stats.jackknife import jackknife


def test_jackknife_is_the_textbook_formula():
    rng = np.random.default_rng(0)
    reps = rng.normal(1.0, 0.1, size=8)
    j = jackknife(1.02, reps, [5] * 8, level=0.9)
    k = 8
    est = k * 1.02 - (k - 1) * reps.mean()
    se = math.sqrt((k - 1) / k * ((reps - reps.mean()) ** 2).sum())
    q = student_t.ppf(0.95, k - 1)
    assert (j.estimate, j.se, j.low, j.high) == pytest.approx((est, se, est - q * se, est + q * se))
    # unequal groups: the weighted delete-a-group jackknife reduces to it for equal sizes, differs otherwise
    sizes = np.array([2, 4, 4, 6, 4, 4, 4, 4], float)
    u = jackknife(1.02, reps, sizes)
    h = sizes.sum() / sizes
    est_u = k * 1.02 - ((1 - sizes / sizes.sum()) * reps).sum()
    var = (((h * 1.02 - (h - 1) * reps) - est_u) ** 2 / (h - 1)).sum() / k
    assert (u.estimate, u.se) == pytest.approx((est_u, math.sqrt(var)))
    assert jackknife(1.0, reps, [5] * 8, bias_correct=False).low < 1.0 < jackknife(1.0, reps, [5] * 8).high
    with pytest.raises(GhostmapsError, match="two groups"):
        jackknife(1.0, [1.0], [3])


@pytest.mark.parametrize("metric", ["pearson", "cosine"])
def test_fast_replicates_equal_the_exact_ones(metric):
    pop = Population.random(7, seed=3, layout=True)
    maps, _ = pop.sample(30, np.random.default_rng(0))
    stats = GroupedStats(groups=6, chunk=block_size(30, 6)).update(maps.float()).finish()
    work = about_centre(stats, metric)
    fast = msq_replicates(work, metric, torch.ones(7, dtype=torch.bool))
    m = work.moments()
    centre = m.centre(metric)

    def exact(groups):
        mk = work.moments(groups)
        g, h = mk.centred(metric, centre)
        d = g.diagonal().sqrt()
        r, r0 = g / torch.outer(d, d), h * (mk.count / mk.pair_count) / torch.outer(d, d)
        iu = torch.triu_indices(7, 7, 1)
        return float((r[iu[0], iu[1]] ** 2).mean()), float((r0[iu[0], iu[1]] ** 2).mean())

    want = np.array([exact([g for g in fast.groups if g != k]) for k in fast.groups])
    assert fast.observed == pytest.approx(exact(None)[0], rel=1e-9)
    np.testing.assert_allclose(fast.replicates, want[:, 0], rtol=1e-5)
    np.testing.assert_allclose(fast.null_replicates, want[:, 1], rtol=1e-4, atol=1e-9)


def _coverage(pop: Population, images: int, datasets: int, seed: int, every: int = 1) -> dict[str, float]:
    """Coverage of each interval; ``every``: the baseline folds only every ``every``-th image pair (as the
    survey's untrained network does, 2 by default), keeping the images' own positions (so their groups)."""
    truth = pop.truth()
    rng = np.random.default_rng(seed)
    hits: dict[str, list[bool]] = {}

    def hit(key, low, high, value):
        hits.setdefault(key, []).append(low is not None and low <= value <= high)

    chunk = block_size(images, 16)
    for _ in range(datasets):
        maps, second = pop.sample(images, rng)
        stats = GroupedStats(groups=16, chunk=chunk).update(maps).finish()
        keep = [i for i in range(images) if (i // 2) % every == 0]
        base = GroupedStats(groups=16, chunk=chunk).update(second[keep], keep).finish()
        r = redundancy(stats, baseline=base)
        for name in ("mean_sq_similarity", "participation_ratio"):
            s = r.scores[name]
            hit(name, s.low, s.high, truth[name])
            hit(name + " − null", s.null.low, s.null.high, truth[name] - truth["null_" + name])
            hit(name + " − untrained", s.untrained.low, s.untrained.high, truth[name] - truth["paired_" + name])
            hit(name + " − null ∋ 0", s.null.low, s.null.high, 0.0)
            hit(name + " − untrained ∋ 0", s.untrained.low, s.untrained.high, 0.0)
            # a deliberately bad interval: half as wide, centred on the same estimate
            half = None if s.low is None else (s.high - s.low) / 4
            hit(name + " (too narrow)", s.observed - half, s.observed + half, truth[name])
    return {k: float(np.mean(v)) for k, v in hits.items()}


def test_intervals_cover_the_population_values_on_simulated_layers():
    """200 data sets of 64 images (6 channels, a per-image effect, a shared layout, a paired baseline on the same
    images): the nominal 95% intervals of the smooth scores and of both excesses cover ≥ 90% of the time;
    intervals half as wide do not, so the test can fail."""
    coverage = _coverage(Population.random(6, seed=11, layout=True, paired=True), 64, 200, seed=1)
    for name in ("mean_sq_similarity", "participation_ratio"):
        for key in (name, name + " − null", name + " − untrained"):
            assert coverage[key] >= 0.90, (key, coverage)
        assert coverage[name + " (too narrow)"] < 0.90, coverage


def test_the_untrained_excess_covers_when_the_baseline_sees_every_second_pair():
    """The survey's default design: the untrained network on every 2nd image pair (half the image groups of a
    small set hold none of its images). Its excess intervals still cover ≥ 90% of 200 data sets."""
    coverage = _coverage(Population.random(6, seed=11, layout=True, paired=True), 64, 200, seed=3, every=2)
    for name in ("mean_sq_similarity", "participation_ratio"):
        assert coverage[name + " − untrained"] >= 0.90, (name, coverage)


@pytest.mark.parametrize("every", [1, 2])
def test_independent_channels_show_no_excess_over_either_baseline(every):
    """No false redundancy: independent channels in both networks, the excess intervals over the null and over
    the untrained stand-in (on every pair, or on every 2nd) contain 0 in ≥ 90% of data sets."""
    coverage = _coverage(Population.random(6, seed=12, independent=True, paired=True), 64, 60, seed=2,
                         every=every)
    for name in ("mean_sq_similarity", "participation_ratio"):
        assert coverage[name + " − null ∋ 0"] >= 0.90, coverage
        assert coverage[name + " − untrained ∋ 0"] >= 0.90, coverage
        assert coverage[name] >= 0.90, coverage
