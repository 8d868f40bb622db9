"""Ghost groups and redundancy scores: brute-force checks, planted structure, null baselines, edge cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from analysis import GhostmapsError, channel_similarity, ghost_groups, redundancy
from analysis.measure.scores import matrix_scores
from tests.oracles import brute_bc, brute_scores


def planted_maps(n: int = 12, seed: int = 0) -> torch.Tensor:
    """Channels 0, 3, 5 copy base A (one scaled ×3, one with a little noise); 1 and 6 copy base B (one negated);
    2, 4, 7, 8, 9 are independent noise."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, 8, 8, generator=g, dtype=torch.float64), torch.randn(n, 8, 8, generator=g,
                                                                                 dtype=torch.float64)
    maps = torch.randn(n, 10, 8, 8, generator=g, dtype=torch.float64)
    maps[:, 0], maps[:, 3], maps[:, 5] = a, 3 * a, a + 0.05 * torch.randn(n, 8, 8, generator=g, dtype=torch.float64)
    maps[:, 1], maps[:, 6] = b, -2 * b
    return maps


def test_ghost_groups_recover_planted_groups():
    groups = ghost_groups(channel_similarity(planted_maps(), metric="pearson"), threshold=0.9)
    assert groups.multi == [[0, 3, 5], [1, 6]]
    assert groups.count == 7 and sorted(groups.order) == list(range(10))
    assert groups.labels[0] == groups.labels[3] == groups.labels[5] != groups.labels[1]


@pytest.mark.parametrize("method", ["complete", "average", "single"])
def test_ghost_groups_match_scipy_hierarchical_clustering(method):
    g = torch.Generator().manual_seed(1)
    loadings = torch.randn(20, 3, generator=g, dtype=torch.float64)  # 20 channels from 3 latent signals
    data = loadings @ torch.randn(3, 50, generator=g, dtype=torch.float64)
    sim = torch.corrcoef(data + 0.3 * torch.randn(20, 50, generator=g, dtype=torch.float64))
    tau = 0.6
    ours = ghost_groups(sim, threshold=tau, linkage=method)
    dist = np.clip(1 - np.abs(sim.numpy()), 0, 2)
    np.fill_diagonal(dist, 0)
    ref = fcluster(linkage(squareform(dist, checks=False), method=method), t=1 - tau, criterion="distance")
    as_sets = lambda labels: {frozenset(np.flatnonzero(labels == v).tolist()) for v in set(labels)}  # noqa: E731
    assert as_sets(np.asarray(ours.labels)) == as_sets(ref)
    if method == "complete":
        for group in ours.groups:
            for i in group:
                for j in group:
                    assert abs(sim[i, j]) >= tau - 1e-12




def test_matrix_scores_match_brute_force():
    maps = planted_maps(seed=2)
    maps[:, 9] = 0.0  # dead
    sim = channel_similarity(maps, metric="pearson")
    flat = maps.transpose(0, 1).reshape(10, -1).numpy()
    cov = np.cov(flat, bias=True)
    got = matrix_scores(sim.matrix, sim.valid, torch.from_numpy(cov), threshold=0.9)
    want = brute_scores(sim.matrix.numpy(), sim.valid.numpy(), cov, 0.9)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-9), k
    assert got["groups"] == 6 and got["ratio"] == pytest.approx(10 / 6)


def test_redundancy_of_planted_layer_beats_its_baseline():
    r = redundancy(planted_maps(n=16, seed=3), metric="pearson", threshold=0.9, bootstrap=30)
    assert r.scores["ghost_fraction"].observed == pytest.approx(5 / 10)
    assert r.scores["ghost_fraction"].baseline == 0.0
    assert r.scores["groups"].observed == 7 and r.suggested_ratio == 1
    ci = r.scores["ghost_fraction"]
    assert ci.low <= ci.observed <= ci.high
    assert r.scores["participation_ratio"].observed < r.scores["participation_ratio"].baseline
    json.loads(r.to_json())


def test_independent_noise_scores_near_its_baseline():
    g = torch.Generator().manual_seed(4)
    maps = torch.relu(torch.randn(40, 12, 6, 6, generator=g, dtype=torch.float64))  # non-negative, unrelated
    r = redundancy(maps, metric="cosine", threshold=0.9, bootstrap=40)
    mean_abs = r.scores["mean_abs_similarity"]
    # ReLU maps look alike under cosine: E[relu(z)]² / E[relu(z)²] = (1/2π) / (1/2) = 1/π for independent z...
    assert mean_abs.observed == pytest.approx(1 / math.pi, abs=0.01)
    assert abs(mean_abs.observed - mean_abs.baseline) < 0.02  # ...and so do maps of different images
    assert mean_abs.low <= mean_abs.baseline <= mean_abs.high
    pr = r.scores["participation_ratio"]
    assert abs(pr.observed - pr.baseline) / pr.baseline < 0.1
    assert r.scores["ghost_fraction"].observed == r.scores["ghost_fraction"].baseline == 0.0


def test_a_score_depending_on_one_shared_signal_is_much_above_baseline_for_real_ghosts():
    g = torch.Generator().manual_seed(5)
    base = torch.relu(torch.randn(30, 1, 6, 6, generator=g, dtype=torch.float64))
    maps = torch.cat([base * s + 0.01 * torch.rand(30, 1, 6, 6, generator=g, dtype=torch.float64)
                      for s in (1.0, 2.0, 0.5, 4.0)], 1)
    r = redundancy(maps, threshold=0.95, bootstrap=0)
    assert r.scores["ghost_fraction"].observed == 1.0 and r.scores["groups"].observed == 1
    assert r.suggested_ratio == 4 and r.scores["ratio"].baseline == 1.0


def finite(obj) -> bool:
    if isinstance(obj, dict):
        return all(finite(v) for v in obj.values())
    if isinstance(obj, list):
        return all(finite(v) for v in obj)
    return not (isinstance(obj, float) and not math.isfinite(obj))


@pytest.mark.parametrize("maps", [
    torch.zeros(3, 4, 5, 5),  # all-zero layer
    torch.rand(5, 1, 4, 4),  # single channel
    torch.rand(6, 7, 1, 1),  # 1×1 spatial maps
    torch.rand(4, 6, 5, 5).half(),  # fp16
    torch.rand(1, 6, 5, 5),  # one image: no baseline, no interval
], ids=["zero", "one-channel", "1x1", "fp16", "one-image"])
def test_degenerate_layers_give_clear_finite_results(maps):
    for metric in ("cosine", "pearson"):
        r = redundancy(maps, metric=metric, bootstrap=10)
        d = r.to_dict()
        assert finite(d)
        assert all(s.observed == s.observed for s in r.scores.values())
        if maps.abs().sum() == 0:
            assert r.valid == 0 and len(r.dead) == 4 and r.scores["groups"].observed == 0
            assert r.scores["ratio"].observed == 4 and r.scores["participation_ratio"].observed == 0
        if maps.shape[0] == 1:
            assert r.scores["groups"].baseline is None and r.scores["groups"].low is None and r.notes
        if maps.shape[1] == 1:
            assert r.scores["ghost_fraction"].observed == 0 and r.scores["groups"].observed == 1


def full_brute_scores(maps: np.ndarray, valid: np.ndarray, tau: float = 0.9) -> dict[str, float]:
    """Every score of float64 maps N×C×H×W (cosine), with scipy's complete-linkage clustering for the groups."""
    n, c = maps.shape[:2]
    flat = maps.transpose(1, 0, 2, 3).reshape(c, -1)
    raw = flat @ flat.T / flat.shape[1]
    mu = flat.mean(1)
    cov = raw - np.outer(mu, mu)
    d = np.sqrt(np.clip(np.diag(raw), 0, None))
    ok = valid & (d > 0)
    dd = np.where(ok, d, 1.0)
    sim = np.clip(raw / np.outer(dd, dd), -1, 1)
    sim[~np.outer(ok, ok)] = 0
    np.fill_diagonal(sim, ok)
    idx = np.flatnonzero(valid)
    dist = np.clip(1 - np.abs(sim[np.ix_(idx, idx)]), 0, 2)
    np.fill_diagonal(dist, 0)
    labels = fcluster(linkage(squareform(dist, checks=False), "complete"), t=1 - tau + 1e-12, criterion="distance")
    out = brute_scores(sim, valid, cov, tau)
    groups = len(set(labels))
    return {**out, "groups": groups, "ratio": c / max(groups, 1)}


def test_fp16_maps_score_like_the_float64_brute_force_of_their_values():
    maps = (torch.rand(6, 5, 4, 4, generator=torch.Generator().manual_seed(0)) * 4 + 60).half()  # large mean
    got = redundancy(maps, bootstrap=0)
    want = full_brute_scores(maps.double().numpy(), np.ones(5, bool))
    for k, v in want.items():
        assert got.scores[k].observed == pytest.approx(v, rel=1e-5, abs=1e-9), k






@pytest.mark.parametrize("case", ["centred", "shifted", "ties", "all_below"])
def test_bc_interval_matches_the_formula_computed_by_hand(case):
    from analysis.measure.scores import bc_interval

    rng = np.random.default_rng(1)
    values = list(rng.normal(size=200))
    observed = {"centred": float(np.median(values)), "shifted": 0.8, "ties": 3.0, "all_below": 9.0}[case]
    if case == "ties":
        values = list(np.round(rng.normal(3, 1, size=150)))  # many replicates equal to the observed value
    low, high = bc_interval(values, observed, 0.9)
    want = brute_bc(values, observed, 0.9)
    assert (low, high) == pytest.approx(want, rel=1e-12, abs=1e-12)
    if case == "centred":  # z₀ = 0: the plain percentile interval
        assert (low, high) == pytest.approx(tuple(np.quantile(values, [0.05, 0.95])))
    if case == "shifted":  # the interval moves towards the observed value
        assert low > np.quantile(values, 0.05) and high > np.quantile(values, 0.95)


def test_bootstrap_intervals_match_brute_force_replicates():
    from analysis.stats import block_size

    g = torch.Generator().manual_seed(4)
    maps = torch.relu(planted_maps(n=12, seed=4) + 0.3 * torch.randn(12, 10, 8, 8, generator=g,
                                                                      dtype=torch.float64))
    r = redundancy(maps, bootstrap=40, seed=5, level=0.9)
    m = maps.numpy()
    n = m.shape[0]
    chunk, k = block_size(n, 8), 8
    valid = np.ones(10, bool)
    valid[r.dead + r.constant] = False
    group = [(i // chunk) % k for i in range(n)]
    filled = sorted(set(group))
    rng = np.random.default_rng(5)
    draws: dict[str, list[float]] = {name: [] for name in r.scores}
    for _ in range(40):
        counts = rng.multinomial(len(filled), [1 / len(filled)] * len(filled))
        chosen = [i for gr, cnt in zip(filled, counts, strict=True) for i in range(n) if group[i] == gr for _ in range(cnt)]
        for name, value in full_brute_scores(m[chosen], valid).items():
            draws[name].append(value)
    for name, score in r.scores.items():
        want = brute_bc(draws[name], score.observed, 0.9)
        assert (score.low, score.high) == pytest.approx(want, rel=1e-5, abs=1e-9), name


def test_scores_outside_their_interval_are_flagged():
    g = torch.Generator().manual_seed(7)
    maps = torch.randn(5, 40, 2, 2, generator=g, dtype=torch.float64)  # 20 positions, 40 channels: rank-limited
    r = redundancy(maps, bootstrap=30, seed=5)  # no replicate draws every image once (that one would be a tie)
    pr = r.scores["participation_ratio"]
    assert pr.high < pr.observed  # repeated images lower the rank of every replicate...
    assert any("participation_ratio" in note for note in r.notes)  # ...and the result says so
    clean = redundancy(torch.randn(40, 3, 4, 4, generator=g, dtype=torch.float64), bootstrap=30)
    assert not any("outside" in note for note in clean.notes)


def test_bootstrap_is_deterministic_and_bad_input_is_an_error():
    maps = planted_maps(n=10, seed=6)
    a, b = redundancy(maps, bootstrap=15, seed=3), redundancy(maps, bootstrap=15, seed=3)
    assert a.to_dict() == b.to_dict()
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
