"""Redundancy scores against brute-force numpy/scipy computations: threshold scores, the noise-matched null,
the jackknife-corrected mean square and participation ratio, split halves, rank99, baselines, edge cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform
from scipy.stats import t as student_t
from sklearn.metrics import adjusted_rand_score

from analysis import GhostmapsError, channel_similarity, ghost_groups, redundancy
from analysis.measure._scoring import null_similarity, observed_similarity, threshold_scores
from analysis.measure.replicates import about_centre, msq_replicates
from analysis.stats import GroupedStats, block_size


def planted_maps(n: int = 12, seed: int = 0) -> torch.Tensor:
    """Channels 0, 3, 5 copy base A (one scaled ×3, one with a little noise); 1 and 6 copy base B (one negated);
    2, 4, 7, 8, 9 are independent noise."""
    g = torch.Generator().manual_seed(seed)
    a, b = (torch.randn(n, 8, 8, generator=g, dtype=torch.float64) for _ in range(2))
    maps = torch.randn(n, 10, 8, 8, generator=g, dtype=torch.float64)
    maps[:, 0], maps[:, 3], maps[:, 5] = a, 3 * a, a + 0.05 * torch.randn(n, 8, 8, generator=g, dtype=torch.float64)
    maps[:, 1], maps[:, 6] = b, -2 * b
    return maps


def image_effect_maps(n: int, c: int, size: int, seed: int, effect: float = 0.7) -> torch.Tensor:
    """Independent channels with a per-image offset (positions of one image are dependent)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, size, size, generator=g, dtype=torch.float64) + \
        effect * torch.randn(n, c, 1, 1, generator=g, dtype=torch.float64)


def corr_about(x: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Correlation of the channels of x (N×C×P) about a given centre."""
    flat = x.transpose(1, 0, 2).reshape(x.shape[1], -1) - centre[:, None]
    cov = flat @ flat.T
    d = np.sqrt(np.diag(cov))
    return cov / np.outer(d, d)


def msq(r: np.ndarray) -> float:
    iu = np.triu_indices(r.shape[0], 1)
    return float((r[iu] ** 2).mean())


def groups_of(n: int, k: int) -> list[list[int]]:
    chunk = block_size(n, k)
    out: dict[int, list[int]] = {}
    for i in range(n):
        out.setdefault((i // chunk) % k, []).append(i)
    return [out[g] for g in sorted(out)]


def brute_jackknife(full: float, reps: list[float], sizes: list[int], level: float = 0.95
                    ) -> tuple[float, float, float]:
    """Weighted delete-a-group jackknife, interval on log(θ + b), b the removed bias: (estimate, low, high)."""
    k, n = len(reps), sum(sizes)
    reps, m = np.array(reps), np.array(sizes, float)
    h = n / m
    est = k * full - ((1 - m / n) * reps).sum()
    pseudo = h * full - (h - 1) * reps
    se = math.sqrt(((pseudo - est) ** 2 / (h - 1)).sum() / k)
    q = student_t.ppf(0.5 + level / 2, k - 1)
    b = max(full - est, 0.0)
    return est, (est + b) * math.exp(-q * se / (est + b)) - b, (est + b) * math.exp(q * se / (est + b)) - b


def brute_mover(a: tuple[float, float, float], b: tuple[float, float, float], r: float) -> tuple[float, ...]:
    d = a[0] - b[0]
    low = d - math.sqrt((a[0] - a[1]) ** 2 + (b[2] - b[0]) ** 2 - 2 * r * (a[0] - a[1]) * (b[2] - b[0]))
    high = d + math.sqrt((a[2] - a[0]) ** 2 + (b[0] - b[1]) ** 2 - 2 * r * (a[2] - a[0]) * (b[0] - b[1]))
    return d, low, high


def test_threshold_scores_match_brute_force_and_scipy():
    maps = planted_maps(seed=2)
    maps[:, 9] = 0.0  # dead
    sim = channel_similarity(maps)
    got, groups = threshold_scores(sim.matrix, sim.valid, 0.9, "complete")
    m, valid = sim.matrix.numpy(), sim.valid.numpy()
    idx = np.flatnonzero(valid)
    fraction = np.mean([any(abs(m[i, j]) >= 0.9 for j in idx if j != i) for i in idx])
    dist = np.clip(1 - np.abs(m[np.ix_(idx, idx)]), 0, 2)
    np.fill_diagonal(dist, 0)
    labels = fcluster(linkage(squareform(dist, checks=False), "complete"), t=0.1 + 1e-12, criterion="distance")
    pairs = [abs(m[i, j]) for a, i in enumerate(idx) for j in idx[a + 1:]]
    assert got["ghost_fraction"] == pytest.approx(fraction) and got["groups"] == len(set(labels)) == 6
    assert got["ratio"] == pytest.approx(10 / 6) and got["mean_abs_similarity"] == pytest.approx(np.mean(pairs))
    assert groups.multi == [[0, 3, 5], [1, 6]]


@pytest.mark.parametrize("metric", ["pearson", "cosine"])
def test_noise_matched_null_equals_a_loop_over_image_pairs(metric):
    maps = torch.relu(planted_maps(n=9, seed=3))  # 9 images: four pairs, image 8 unpaired
    stats = GroupedStats(groups=2, chunk=2).update(maps).finish()
    m = stats.moments()
    valid = torch.ones(10, dtype=torch.bool)
    got = null_similarity(m, metric, valid).numpy()
    x = maps.numpy().reshape(9, 10, -1)
    centre = x.transpose(1, 0, 2).reshape(10, -1).mean(1) if metric == "pearson" else np.zeros(10)
    y = x - centre[None, :, None]
    cross, terms = np.zeros((10, 10)), 0
    for j in range(4):  # image 2j against image 2j + 1, both orders, position by position
        for p in range(y.shape[2]):
            a, b = y[2 * j, :, p], y[2 * j + 1, :, p]
            cross += np.outer(a, b) + np.outer(b, a)
            terms += 2
    var = (y.transpose(1, 0, 2).reshape(10, -1) ** 2).mean(1)  # every image's own variance (all 9)
    want = cross / terms / np.sqrt(np.outer(var, var))
    np.fill_diagonal(want, 1.0)
    np.testing.assert_allclose(got, want, atol=1e-9)
    r = redundancy(stats, metric=metric)
    iu = np.triu_indices(10, 1)
    assert r.scores["mean_abs_similarity"].baseline == pytest.approx(np.abs(want[iu]).mean(), abs=1e-9)


@pytest.mark.parametrize("metric", ["pearson", "cosine"])
def test_scores_read_the_reference_matrices_on_a_blocked_layer_with_dead_channels(metric):
    """The scores build each similarity on the valid channels only, in place, from the accumulators; they must
    read what the full reference matrices give, with dead channels, C ≥ 256 (accumulators whole only in their
    upper row blocks), an unpaired image and ghosts that need clustering."""
    g = torch.Generator().manual_seed(5)
    n, c = 11, 300
    base = torch.randn(n, 4, 6, 6, generator=g, dtype=torch.float64)
    maps = torch.randn(n, c, 6, 6, generator=g, dtype=torch.float64) + \
        0.3 * torch.randn(n, c, 1, 1, generator=g, dtype=torch.float64)
    maps[:, 10:40] = base[:, torch.arange(30) % 4] + 0.2 * torch.randn(n, 30, 6, 6, generator=g, dtype=torch.float64)
    maps[:, 50:60] = 0.0
    maps = torch.relu(maps) if metric == "cosine" else maps
    stats = GroupedStats(groups=4, chunk=2).update(maps).finish()
    other = GroupedStats(groups=4, chunk=2).update(torch.randn(n, c, 6, 6, generator=g, dtype=torch.float64)).finish()
    r = redundancy(stats, metric=metric, threshold=0.8, baseline=other)
    work = about_centre(stats, metric)
    total = work.total()
    valid = ~(total.dead | total.constant)
    assert int(valid.sum()) == c - 10
    m = work.moments()
    obs, groups = threshold_scores(observed_similarity(m, metric, valid), valid, 0.8, "complete")
    null = threshold_scores(null_similarity(m, metric, valid), valid, 0.8, "complete")[0]
    bwork = about_centre(other, metric)
    bvalid = ~(bwork.total().dead | bwork.total().constant)
    untrained = threshold_scores(observed_similarity(bwork.moments(), metric, bvalid), bvalid, 0.8, "complete")[0]
    assert 1 < obs["groups"] < c - 10  # some ghosts were clustered
    for name in ("ghost_fraction", "groups", "ratio", "mean_abs_similarity"):
        assert r.scores[name].observed == pytest.approx(obs[name], rel=1e-12, abs=1e-15)
        assert r.scores[name].null.value == pytest.approx(null[name], rel=1e-12, abs=1e-15)
        assert r.scores[name].untrained.value == pytest.approx(untrained[name], rel=1e-12, abs=1e-15)
    halves = [threshold_scores(observed_similarity(work.moments(h), metric, valid), valid, 0.8, "complete")
              for h in (work.filled_groups[0::2], work.filled_groups[1::2])]
    for name in ("ghost_fraction", "groups", "ratio"):
        assert r.scores[name].halves == pytest.approx([h[0][name] for h in halves], rel=1e-12)
    keep = valid.nonzero().flatten().tolist()
    assert r.groups_agreement == pytest.approx(adjusted_rand_score([halves[0][1].labels[i] for i in keep],
                                                                   [halves[1][1].labels[i] for i in keep]))
    msq = msq_replicates(work, metric, valid)  # the full-sample mean squares from the Gram and cross products
    fast = msq_replicates(work, metric, valid, observed=(msq.observed, msq.null))
    np.testing.assert_array_equal(fast.replicates, msq.replicates)
    np.testing.assert_array_equal(fast.null_replicates, msq.null_replicates)


def test_mean_square_and_participation_ratio_are_the_jackknife_corrected_values():
    maps = planted_maps(n=14, seed=4) + 0.5 * torch.randn(14, 10, 1, 1, generator=torch.Generator().manual_seed(1),
                                                        dtype=torch.float64)
    r = redundancy(maps, groups=5, level=0.9)
    x = maps.numpy().reshape(14, 10, -1)
    centre = x.transpose(1, 0, 2).reshape(10, -1).mean(1)
    members = groups_of(14, 5)
    full = msq(corr_about(x, centre))
    reps = [msq(corr_about(x[[i for i in range(14) if i not in g]], centre)) for g in members]
    est, low, high = brute_jackknife(full, reps, [len(g) for g in members], 0.9)
    s = r.scores["mean_sq_similarity"]
    assert r.interval_groups == 5 and (s.observed, s.low, s.high) == pytest.approx((est, low, high), rel=1e-6)
    assert low <= s.observed <= high
    v = 10
    pr = r.scores["participation_ratio"]
    f = lambda q: v / (1 + (v - 1) * q)  # noqa: E731
    assert (pr.observed, pr.low, pr.high) == pytest.approx((f(est), f(high), f(low)), rel=1e-6)


def test_participation_ratio_of_independent_channels_is_corrected_for_sample_size():
    # C = 256 independent channels, 64 images of 14×14 with a per-image effect: the true participation ratio is C
    maps = image_effect_maps(64, 256, 14, seed=5)
    r = redundancy(maps)
    pr = r.scores["participation_ratio"]
    assert abs(pr.observed - 256) / 256 < 0.10 and pr.low <= pr.observed <= pr.high
    flat = maps.numpy().transpose(1, 0, 2, 3).reshape(256, -1)
    corr = np.corrcoef(flat)
    uncorrected = 256 ** 2 / (corr ** 2).sum()
    assert uncorrected < 0.8 * 256  # the noise floor alone would make the channels look redundant
    assert r.scores["mean_sq_similarity"].null.low <= 0 <= r.scores["mean_sq_similarity"].null.high


def test_planted_ghosts_beat_the_null_and_threshold_scores_carry_split_halves():
    maps = planted_maps(n=24, seed=6)
    r = redundancy(maps, threshold=0.9, groups=6)
    assert r.scores["ghost_fraction"].observed == pytest.approx(5 / 10) and r.scores["ghost_fraction"].baseline == 0
    assert r.scores["groups"].observed == 7 and r.suggested_ratio == 1
    sq = r.scores["mean_sq_similarity"]
    assert sq.null.low > 0 and sq.low <= sq.observed <= sq.high
    assert r.scores["participation_ratio"].null.high < 0  # fewer independent directions than the null
    for name in ("ghost_fraction", "groups", "ratio"):
        s = r.scores[name]
        assert s.low is None and s.high is None and len(s.halves) == 2  # a stability measure, not an interval
    members = groups_of(24, 6)
    halves = [sorted(i for g in members[0::2] for i in g), sorted(i for g in members[1::2] for i in g)]
    labels = []
    for half, value in zip(halves, r.scores["groups"].halves, strict=True):
        m = channel_similarity(maps[half]).matrix.numpy()
        dist = np.clip(1 - np.abs(m), 0, 2)
        np.fill_diagonal(dist, 0)
        lab = fcluster(linkage(squareform(dist, checks=False), "complete"), t=0.1 + 1e-12, criterion="distance")
        labels.append(lab)
        assert value == len(set(lab))
    assert r.groups_agreement == pytest.approx(adjusted_rand_score(*labels))
    json.loads(r.to_json())


def test_rank99_is_cross_validated_between_halves():
    maps = planted_maps(n=16, seed=7)
    r = redundancy(maps, groups=4, rank99=True)
    members = groups_of(16, 4)
    halves = [[i for g in members[0::2] for i in g], [i for g in members[1::2] for i in g]]
    sims = [channel_similarity(maps[h]).matrix.numpy() for h in halves]
    values = []
    for a, b in ((0, 1), (1, 0)):
        lam, vec = np.linalg.eigh(sims[a])
        vec = vec[:, ::-1]
        held = np.clip(np.einsum("ik,ij,jk->k", vec, sims[b], vec), 0, None)
        cum = np.cumsum(held) / held.sum()
        values.append(int(np.argmax(cum >= 0.99 - 1e-12)) + 1)
    s = r.scores["rank99"]
    assert s.halves == values and s.observed == pytest.approx(np.mean(values))


def test_untrained_excess_is_the_paired_jackknife_of_the_difference():
    maps = planted_maps(n=16, seed=8)
    other = image_effect_maps(16, 10, 8, seed=9)
    k = 4
    chunk = block_size(16, k)
    stats = GroupedStats(groups=k, chunk=chunk).update(maps).finish()
    base = GroupedStats(groups=k, chunk=chunk).update(other[:12], 0).finish()  # a subset: images 0–11
    r = redundancy(stats, baseline=base)
    x, z = maps.numpy().reshape(16, 10, -1), other.numpy()[:12].reshape(12, 10, -1)
    cx = x.transpose(1, 0, 2).reshape(10, -1).mean(1)
    cz = z.transpose(1, 0, 2).reshape(10, -1).mean(1)
    members = groups_of(16, k)
    rx = [msq(corr_about(x[[i for i in range(16) if i not in g]], cx)) for g in members]
    rz = [msq(corr_about(z[[i for i in range(12) if i not in g]], cz)) for g in members]
    a = brute_jackknife(msq(corr_about(x, cx)), rx, [len(g) for g in members])
    zm = [g for g in members if any(i < 12 for i in g)]  # the groups the baseline has images in
    b = brute_jackknife(msq(corr_about(z, cz)), [rz[members.index(g)] for g in zm], [sum(i < 12 for i in g)
                                                                                     for g in zm])
    want = brute_mover(a, b, float(np.corrcoef(rx, rz)[0, 1]))
    u = r.scores["mean_sq_similarity"].untrained
    assert (u.excess, u.low, u.high) == pytest.approx(want, rel=1e-6)
    assert u.low <= u.excess <= u.high and r.baseline_images == 12


def test_degenerate_layers_give_clear_finite_results():
    cases = [torch.zeros(3, 4, 5, 5), torch.rand(5, 1, 4, 4), torch.rand(6, 7, 1, 1), torch.rand(4, 6, 5, 5).half(),
             torch.rand(1, 6, 5, 5)]
    for maps in cases:
        for metric in ("pearson", "cosine"):
            r = redundancy(maps, metric=metric, rank99=True)
            text = json.dumps(r.to_dict())
            assert "NaN" not in text and "Infinity" not in text
            if maps.abs().sum() == 0:
                assert r.valid == 0 and len(r.dead) == 4 and r.scores["groups"].observed == 0
            if maps.shape[0] == 1:
                assert r.scores["groups"].baseline is None and r.scores["mean_sq_similarity"].low is None
                assert r.notes
            if maps.shape[1] == 1:
                assert r.scores["ghost_fraction"].observed == 0 and r.scores["groups"].observed == 1


def test_bad_input_is_an_error():
    maps = planted_maps(n=10, seed=6)
    with pytest.raises(GhostmapsError, match="metric"):
        redundancy(maps, metric="l2")
    with pytest.raises(GhostmapsError, match="level"):
        redundancy(maps, level=1.5)
    with pytest.raises(GhostmapsError, match="threshold"):
        ghost_groups(torch.eye(3), threshold=0.0)
    with pytest.raises(GhostmapsError, match="linkage"):
        ghost_groups(torch.eye(3), linkage="ward")
    with pytest.raises(GhostmapsError, match="square"):
        ghost_groups(torch.zeros(2, 3))


def test_ghost_groups_valid_must_be_a_full_boolean_mask():
    sim = torch.tensor([[1.0, 0.95, 0.1, 0.0], [0.95, 1.0, 0.1, 0.0], [0.1, 0.1, 1.0, 0.97], [0.0, 0.0, 0.97, 1.0]])
    ok = ghost_groups(sim, valid=np.array([True, True, True, False]))
    assert sorted(map(sorted, ok.groups)) == [[0, 1], [2]]  # channel 3 left out, as asked
    with pytest.raises(GhostmapsError, match="one entry per channel"):
        ghost_groups(sim, valid=np.array([True, True, True]))  # one short: used to drop channel 3 silently
    with pytest.raises(GhostmapsError, match="boolean mask"):
        ghost_groups(sim, valid=[0, 2])  # indices: used to be read as a (wrong) mask


def test_a_baseline_of_another_layout_is_refused():
    g = torch.Generator().manual_seed(0)
    stats = GroupedStats(groups=4, chunk=2).update(torch.randn(16, 6, 6, 6, generator=g)).finish()
    for other, what in ((torch.randn(16, 4, 6, 6, generator=g), "channels=4"),):
        base = GroupedStats(groups=4, chunk=2).update(other).finish()
        with pytest.raises(GhostmapsError, match=what):
            redundancy(stats, baseline=base)
    for groups, chunk, what in ((8, 2, "groups=8"), (4, 4, "chunk=4")):
        base = GroupedStats(groups=groups, chunk=chunk).update(torch.randn(16, 6, 6, 6, generator=g)).finish()
        with pytest.raises(GhostmapsError, match=what):
            redundancy(stats, baseline=base)
    with pytest.raises(GhostmapsError, match="GroupedStats"):
        redundancy(stats, baseline=torch.randn(16, 6, 6, 6))


def test_rank99_without_two_image_groups_says_it_has_no_baseline_value():
    g = torch.Generator().manual_seed(0)
    stats = GroupedStats(groups=1, chunk=16).update(torch.randn(16, 5, 6, 6, generator=g)).finish()
    base = GroupedStats(groups=1, chunk=16).update(torch.randn(16, 5, 6, 6, generator=g)).finish()
    r = redundancy(stats, baseline=base, rank99=True)
    assert r.scores["rank99"].untrained is None
    assert any("rank99 not corrected for sample size and not compared with the baseline" in n for n in r.notes)
