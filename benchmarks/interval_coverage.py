"""Coverage of the survey's nominal 95% intervals on synthetic maps with a known population.

For each setting, ``--datasets`` independent data sets are drawn from ``analysis.measure.synthetic.Population``
(correlated channels with a per-image effect, so images are the unit of resampling; a shared spatial layout,
so the noise-matched null is not trivially zero; a paired second set of maps on the same images standing in
for the untrained network). Each data set goes through ``analysis.measure.redundancy`` exactly as a survey
layer does (K = 16 image groups, pairs of images for the null), and we count how often each interval holds the
population value, for the observed scores and for the excesses over both baselines, with the stand-in
baseline folded on every image pair and, as the survey's default, on every 2nd pair only. Independent channels
(in both sets of maps) give the false-redundancy rate: how often an excess interval excludes 0.

Also printed, for the record: the same jackknife applied to mean |S| (which the survey reports without an
interval: |S| has a noise floor), and an interval half as wide as the survey's (what a test must catch).

    python benchmarks/interval_coverage.py [--datasets 200] [--images 64 256] [--channels 8]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from analysis.measure.scores import redundancy
from analysis.measure.synthetic import Population
from analysis.stats import DEFAULT_GROUPS, GroupedStats, block_size
from analysis.stats.jackknife import jackknife


def stats_of(maps: torch.Tensor, groups: int = DEFAULT_GROUPS) -> GroupedStats:
    return GroupedStats(groups=groups, chunk=block_size(maps.shape[0], groups)).update(maps).finish()


def covers(low: float | None, high: float | None, truth: float) -> bool:
    return low is not None and low <= truth <= high


def mean_abs_jackknife(stats: GroupedStats, truth_abs: float) -> bool:
    """The jackknife-t interval applied to mean |S| (exact replicates from the group moments)."""
    def mean_abs(m) -> float:
        g, _ = m.centred("pearson")
        d = g.diagonal().sqrt()
        r = (g / torch.outer(d, d)).abs()
        iu = torch.triu_indices(r.shape[0], r.shape[0], 1)
        return float(r[iu[0], iu[1]].mean())

    filled = stats.filled_groups
    reps = [mean_abs(stats.moments([g for g in filled if g != k])) for k in filled]
    j = jackknife(mean_abs(stats.moments()), reps, stats.images[filled].double().numpy(), bias_correct=False)
    return j.low <= truth_abs <= j.high


def run(images: int, datasets: int, channels: int, independent: bool, seed: int) -> dict[str, float]:
    pop = Population.random(channels, seed=seed, independent=independent, layout=not independent, paired=True)
    truth = pop.truth()
    cov, _ = pop.covariances()
    d = np.sqrt(np.diag(cov))
    corr = cov / np.outer(d, d)
    truth_abs = float(np.abs(corr[np.triu_indices(channels, 1)]).mean())
    rng = np.random.default_rng(seed + 1000)
    hits: dict[str, list[bool]] = {}

    def hit(key: str, ok: bool) -> None:
        hits.setdefault(key, []).append(bool(ok))

    half_pairs = [i for i in range(images) if (i // 2) % 2 == 0]  # the survey's baseline_every=2
    for _ in range(datasets):
        maps, second = pop.sample(images, rng)
        stats, base = stats_of(maps), stats_of(second)
        sparse = GroupedStats(groups=DEFAULT_GROUPS, chunk=block_size(images, DEFAULT_GROUPS))
        sparse = sparse.update(second[half_pairs], half_pairs).finish()
        r = redundancy(stats, baseline=base)
        every2 = redundancy(stats, baseline=sparse)
        for name in ("mean_sq_similarity", "participation_ratio"):
            s, s2 = r.scores[name], every2.scores[name]
            excess = truth[name] - truth[f"paired_{name}"]
            hit(f"{name}", covers(s.low, s.high, truth[name]))
            hit(f"{name} − null", covers(s.null.low, s.null.high, truth[name] - truth[f"null_{name}"]))
            hit(f"{name} − untrained", covers(s.untrained.low, s.untrained.high, excess))
            hit(f"{name} − untrained (on every 2nd pair)", covers(s2.untrained.low, s2.untrained.high, excess))
            hit(f"{name}: excess over null contains 0", covers(s.null.low, s.null.high, 0.0))
            hit(f"{name}: excess over untrained contains 0", covers(s.untrained.low, s.untrained.high, 0.0))
            hit(f"{name}: excess over untrained (every 2nd pair) contains 0",
                covers(s2.untrained.low, s2.untrained.high, 0.0))
        hit("mean_abs_similarity (jackknife, not reported)", mean_abs_jackknife(stats, truth_abs))
        half = (r.scores["mean_sq_similarity"].high - r.scores["mean_sq_similarity"].low) / 4
        est = r.scores["mean_sq_similarity"].observed
        hit("mean_sq_similarity, an interval half as wide (wrong)", covers(est - half, est + half,
                                                                           truth["mean_sq_similarity"]))
    return {k: float(np.mean(v)) for k, v in hits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", type=int, default=200)
    parser.add_argument("--images", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{args.datasets} data sets per setting, {args.channels} channels, 8×8 maps, K = {DEFAULT_GROUPS} image "
          "groups, nominal 95% intervals (targets: ≥ 0.90 at 64 images, ≥ 0.93 at 256; independent channels: "
          "excess over either baseline contains 0 in ≥ 0.90)")
    for independent in (False, True):
        kind = "independent channels" if independent else "correlated channels, per-image effect, shared layout"
        results = {}
        for n in args.images:
            start = time.perf_counter()
            results[n] = run(n, args.datasets, args.channels, independent, args.seed)
            print(f"  [{kind}] {n} images: {time.perf_counter() - start:.0f} s", flush=True)
        print(f"\n{kind}")
        print(f"  {'interval':<58}" + "".join(f"{f'{n} images':>12}" for n in args.images))
        for key in results[args.images[0]]:
            if not independent and "contains 0" in key:
                continue  # correlated channels: the excess is not 0 (it is the population excess, above)
            print(f"  {key:<58}" + "".join(f"{results[n][key]:>12.3f}" for n in args.images))
        print()


if __name__ == "__main__":
    main()
