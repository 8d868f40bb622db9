"""ghostability / suggest_ratio / choose_intrinsic / reconstructability: held-out ghost errors in post-BN units,
checked against an explicit GhostModule forward, a hand-run BatchNorm, brute force over all structures, and
planted data whose true error is known."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analysis import GhostmapsError, ghost_groups, ghost_pairs
from analysis.reconstruct import (
    choose_intrinsic,
    ghostability,
    heldout_r2,
    reconstructability,
    split_maps,
    suggest_ratio,
)
from tests.reconstruct.test_reconstruct import conv, planted_layer, smooth_maps


def ghost_module_forward(maps, g):
    """What a GhostModule initialised from ``g`` outputs: primary = intrinsic maps, cheap = depthwise conv with
    channel multiplier ratio-1 (groups = m), concatenated and cut to C channels (module order)."""
    primary = maps[:, g.intrinsic].double()
    w, b = g.cheap_weights()
    cheap = F.conv2d(primary, w.double(), b.double(), padding=g.d // 2, groups=len(g.intrinsic))
    return torch.cat([primary, cheap], dim=1)[:, : maps.shape[1]]


def ghost_only_error(maps, g, weights=None):
    """Ghost channels' pooled relative error of the explicit module output on ``maps`` (weights: post-BN)."""
    target = maps[:, g.module_order].double()
    out = ghost_module_forward(maps, g)
    m = len(g.intrinsic)
    w = torch.ones(maps.shape[1], dtype=torch.float64) if weights is None else torch.as_tensor(weights)[g.module_order]
    err = ((out - target) ** 2).sum((0, 2, 3))[m:]
    ss = ((target - target.mean((0, 2, 3), keepdim=True)) ** 2).sum((0, 2, 3))[m:]
    return float((w[m:] * err).sum() / (w[m:] * ss).sum())


@pytest.mark.parametrize("ratio", [2, 3])
def test_planted_groups_are_found_and_exact_held_out(ratio):
    maps, groups, bases = planted_layer(n_base=4, ratio=ratio, n=6)
    g = ghostability(maps, ratio=ratio, d=3)
    assert g.split.kind == "seeded split" and g.split.n_fit == 3 and g.split.n_eval == 3
    assert sorted(g.intrinsic) == sorted(bases.values())
    assert all(groups[ghost] == groups[src] for ghost, src in g.assignment.items())
    assert g.ghost_error < 1e-6 and g.max_rel_error < 1e-6
    assert ghostability(maps, ratio=ratio + 2, d=3).ghost_error > 0.05


@pytest.mark.parametrize("c,ratio", [(7, 2), (10, 4), (9, 3), (11, 3)])
def test_structure_is_a_ghost_module_and_reports_ghosts_only_on_held_out_images(c, ratio):
    maps = smooth_maps((6, c, 8, 7), seed=c + ratio, relu=True)
    g = ghostability(maps, ratio=ratio, d=3, split=0.5, seed=4)
    m = math.ceil(c / ratio)
    assert len(g.intrinsic) == m and sorted(g.module_order) == list(range(c))
    loads = [len(s) for s in g.slots]
    assert max(loads) <= ratio - 1 and all(n == ratio - 1 for n in loads[:-1]) and sum(loads) == c - m
    held = maps[list(g.split.eval_index)]
    fit = maps[[i for i in range(6) if i not in g.split.eval_index]]
    assert g.ghost_error == pytest.approx(ghost_only_error(held, g), rel=1e-5)  # float32 module weights
    assert g.fit_ghost_error == pytest.approx(ghost_only_error(fit, g), rel=1e-5)
    assert g.overall_error == g.ghost_error
    np.testing.assert_allclose(g.predict(held)[:, g.module_order].numpy(), ghost_module_forward(held, g).numpy(),
                               atol=1e-6)  # cheap_weights() are float32
    assert np.all(g.rel_error[g.intrinsic] == 0) and g.max_rel_error >= g.mean_rel_error > 0
    iv = g.ghost_error_interval
    assert iv.low < g.ghost_error < iv.high and iv.n == 3
    back = type(g).from_dict(json.loads(json.dumps(g.to_dict())))
    assert back.to_dict() == g.to_dict()
    assert "held out" in str(g) and len(g.rows()) == c


def test_post_bn_weighting_matches_a_hand_run_batchnorm():
    maps = smooth_maps((8, 6, 9, 9), seed=5, relu=True)
    maps[:, 3] = 4.0 * conv(maps[:, 1], torch.flip(torch.eye(3), [0]), 0.2, 3) + 0.3 * maps[:, 4]
    bn = nn.BatchNorm2d(6).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.2, 1.5, 0.7, 3.0, 0.05, 1.0]))
        bn.running_var.copy_(torch.tensor([0.5, 2.0, 1.0, 9.0, 0.3, 1.2]))
        bn.running_mean.copy_(torch.randn(6))
    g = ghostability(maps, ratio=2, d=3, bn=bn, split=0.5, seed=1)
    held = maps[list(g.split.eval_index)].double()
    bnd = bn.double()
    with torch.no_grad():
        y_true, y_pred = bnd(held), bnd(g.predict(held))
    ghosts = g.ghosts
    err = ((y_pred - y_true) ** 2).sum((0, 2, 3))
    ss = ((y_true - y_true.mean((0, 2, 3), keepdim=True)) ** 2).sum((0, 2, 3))
    assert g.ghost_error == pytest.approx(float(err[ghosts].sum() / ss[ghosts].sum()), rel=1e-9)
    positions = held.shape[0] * 81
    np.testing.assert_allclose(g.post_bn_mse[ghosts], (err[ghosts] / positions).numpy(), rtol=1e-9)
    assert g.max_post_bn_mse == pytest.approx(float(err[ghosts].max() / positions))
    assert "post-BN" in g.units
    # the same weights given as a tuple or as the vector itself
    w = (bn.weight ** 2 / (bn.running_var + bn.eps)).detach()
    for spec in ((bn.weight.detach(), bn.running_var, bn.eps), w):
        again = ghostability(maps, ratio=2, d=3, bn=spec, split=0.5, seed=1)
        assert again.ghost_error == pytest.approx(g.ghost_error, rel=1e-6)
    plain = ghostability(maps, ratio=2, d=3, split=0.5, seed=1)
    assert plain.post_bn_mse is None and "no BN" in plain.units
    with pytest.raises(GhostmapsError, match="BN has 4 channels"):
        ghostability(maps, bn=nn.BatchNorm2d(4))


def test_held_out_beats_in_sample_optimism_on_planted_noise():
    """Ghost = conv(base) + noise: the true op's error on each part of the images is known exactly. In-sample the
    least-squares op is never worse than the true op (it fits the noise); held out it is worse, and d = 7
    overfits more than d = 3 on small maps."""
    rng = torch.Generator().manual_seed(0)
    n_fit, hw, sigma = 3, (7, 7), 0.5
    base = smooth_maps((n_fit + 40, 1, *hw), seed=11)[:, 0]
    clean = conv(base, torch.tensor([[0.0, 0.5, 0.0], [0.5, 1.0, 0.5], [0.0, 0.5, 0.0]]), 0.0, 3)
    noise = sigma * torch.randn(clean.shape, generator=rng, dtype=torch.float64)
    ghost = clean + noise
    maps = torch.stack([base, ghost], 1)

    def true_error(sl):
        g = ghost[sl]
        return float((noise[sl] ** 2).sum() / ((g - g.mean()) ** 2).sum())

    keep_base = np.array([1e6, 1.0])  # post-BN weights that make an error on the base costly: it stays intrinsic
    fits = {d: ghostability(maps[:n_fit], ratio=2, d=d, heldout=maps[n_fit:], bn=keep_base) for d in (3, 7)}
    for d, g in fits.items():
        assert g.intrinsic == [0] and g.split.kind == "held-out maps"
        assert g.fit_ghost_error <= true_error(slice(0, n_fit)) + 1e-12, d
        assert g.ghost_error > true_error(slice(n_fit, None)), d
    assert fits[3].ghost_error < fits[7].ghost_error
    assert fits[3].ghost_error == pytest.approx(true_error(slice(n_fit, None)), rel=0.35)
    assert ghostability(maps[:n_fit], d=3, split=None).split.in_sample  # in-sample is labelled so


def _brute(cost, ratio):
    c = cost.shape[0]
    m, r1 = math.ceil(c / ratio), ratio - 1
    best = math.inf
    for intr in itertools.combinations(range(c), m):
        ghosts = [j for j in range(c) if j not in intr]
        for a in itertools.product(range(m), repeat=len(ghosts)):
            counts = np.bincount(a, minlength=m)
            if counts.max() <= r1 and (counts < r1).sum() <= 1:
                best = min(best, sum(cost[intr[p], g] for p, g in zip(a, ghosts, strict=True)))
    return best


@pytest.mark.parametrize("c,ratio", [(6, 2), (7, 2), (8, 2), (7, 3)])
def test_intrinsic_choice_matches_brute_force_on_a_tiny_layer(c, ratio):
    maps = smooth_maps((4, c, 6, 6), seed=c * ratio, relu=True)
    maps[:, 1] = 0.7 * maps[:, 2] + 0.1 * maps[:, 0]
    g = ghostability(maps, ratio=ratio, d=3, split=None)
    from analysis.reconstruct.lstsq import _pair_fits

    sse = _pair_fits(maps, 3, 1e-8).sse
    best = _brute(sse, ratio)
    assert g.choice["cost"] == pytest.approx(best, rel=1e-9, abs=1e-12)
    greedy = ghostability(maps, ratio=ratio, d=3, split=None, choice="greedy")
    assert greedy.choice["cost"] >= best - 1e-12
    rng = np.random.default_rng(c)
    for _ in range(5):  # random costs, where greedy is often wrong
        cost = rng.random((c, c)) ** 3
        np.fill_diagonal(cost, 0)
        assert choose_intrinsic(cost, ratio).cost == pytest.approx(_brute(cost, ratio), rel=1e-9)
        if ratio == 2:
            h = choose_intrinsic(cost, 2, "heuristic")
            assert h.cost >= _brute(cost, 2) - 1e-12 and h.lower_bound <= _brute(cost, 2) + 1e-12


def test_capacitated_assignment_is_exact_for_a_given_intrinsic_set():
    """For a fixed intrinsic set, the ghost assignment (each group <= s - 1 ghosts, only one short) against
    enumerating every assignment; the old rule (the least-loaded group of the unconstrained optimum made the
    short one) missed the optimum in 24 of 300 such draws."""
    from analysis.reconstruct.capacitated import _assign

    rng = np.random.default_rng(0)
    for _ in range(120):
        c, ratio = int(rng.integers(4, 9)), int(rng.integers(3, 5))
        m, r1 = math.ceil(c / ratio), ratio - 1
        cost = rng.random((c, c))
        np.fill_diagonal(cost, 0)
        intr = sorted(rng.choice(c, m, replace=False).tolist())
        ghosts = [j for j in range(c) if j not in intr]
        best = math.inf
        for a in itertools.product(range(m), repeat=len(ghosts)):
            load = np.bincount(a, minlength=m)
            if load.max() <= r1 and (load < r1).sum() <= 1:
                best = min(best, sum(cost[intr[p], g] for p, g in zip(a, ghosts, strict=True)))
        slots = _assign(cost, intr, ghosts, r1)
        assert sorted(g for s in slots for g in s) == ghosts
        assert max(map(len, slots)) <= r1 and sum(len(s) < r1 for s in slots) <= 1
        assert sum(cost[intr[p], g] for p, s in enumerate(slots) for g in s) == pytest.approx(best, rel=1e-12)


def test_matching_heuristic_against_exact_on_a_larger_layer():
    rng = np.random.default_rng(3)
    cost = rng.random((60, 60)) ** 2
    exact, heur = choose_intrinsic(cost, 2, "exact"), choose_intrinsic(cost, 2, "heuristic")
    assert heur.lower_bound <= exact.cost * (1 + 1e-12) and exact.cost <= heur.cost * (1 + 1e-12) <= 1.02 * exact.cost
    assert choose_intrinsic(cost, 2, "greedy").cost >= exact.cost


def test_reconstructability_similarity_works_with_pairs_and_groups():
    maps = smooth_maps((8, 6, 9, 9), seed=7, relu=True)
    maps[:, 4] = conv(maps[:, 1], torch.tensor([[0.1, 0.3, 0.1], [0.0, -0.9, 0.2], [0.1, 0.0, 0.1]]), 0.3, 3)
    maps[:, 5] = 0.0
    sim = reconstructability(maps, d=3, layer="x")
    assert sim.metric == "r2" and bool(sim.dead[5]) and sim.layer == "x"
    r2, sp = heldout_r2(maps, d=3)
    # directed held-out R^2 against a direct fit-and-apply
    fit_x, eval_x, _ = split_maps(maps)
    from analysis.reconstruct import fit_cheap_op

    f = fit_cheap_op(fit_x[:, 1], fit_x[:, 4], d=3)
    pred = f.predict(eval_x[:, 1])
    y = eval_x[:, 4].double()
    want = 1 - float(((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum())
    assert r2[1, 4] == pytest.approx(want, rel=1e-8)
    assert sim.matrix[1, 4] == pytest.approx(max(r2[1, 4], r2[4, 1]))
    assert float(sim.matrix.min()) >= 0 and float(sim.matrix.max()) <= 1
    pairs = ghost_pairs(sim, k=1)
    assert (pairs[0].i, pairs[0].j) == (1, 4) and pairs.metric == "r2"
    assert {1, 4} in [set(grp) for grp in ghost_groups(sim, threshold=0.95).groups]


def test_suggest_ratio_held_out_on_planted_groups():
    maps, _, _ = planted_layer(n_base=4, ratio=3, hw=(10, 10), n=6)  # C = 12, groups of 3
    s = suggest_ratio(maps, max_error=0.01, ratios=(2, 3, 4, 6), d=3)
    assert s.ratio == 3 and s.errors[3] < 0.01 and s.errors[4] > 0.01 and s.errors[2] > 0.01
    assert s.ghostability.ratio == 3 and s.ghostability.split.n_eval == 3
    assert type(s).from_dict(json.loads(json.dumps(s.to_dict()))).to_dict() == s.to_dict()
    assert [r["chosen"] for r in s.rows()] == [False, True, False, False]
    with pytest.raises(GhostmapsError, match="max_error"):
        suggest_ratio(maps, max_error=-0.1)


def test_degenerate_inputs_give_no_nan():
    maps, _, _ = planted_layer(n_base=3, ratio=2, hw=(6, 6))
    maps = torch.cat([maps, torch.zeros(4, 2, 6, 6, dtype=maps.dtype)], dim=1)  # two dead channels
    g = ghostability(maps, ratio=2)
    assert g.dead.tolist()[-2:] == [True, True] and np.all(np.isfinite(g.rel_error)) and g.ghost_error < 1e-6
    for x, ratio in [(torch.randn(3, 1, 5, 5), 2), (torch.randn(5, 6, 1, 1), 2), (torch.zeros(2, 4, 3, 3), 2),
                     (smooth_maps((2, 6, 8, 8), seed=3, relu=True).half(), 3), (torch.full((2, 3, 4, 4), 7.0), 2)]:
        g = ghostability(x, ratio=ratio, d=3)
        assert np.all(np.isfinite(g.rel_error)) and math.isfinite(g.ghost_error) and math.isfinite(g.fit_ghost_error)
        assert np.all(np.isfinite(g.kernel)) and np.all(np.isfinite(g.bias))


def test_bad_input_is_a_clear_error():
    x = torch.randn(2, 4, 5, 5)
    for r in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="ratio must be an int >= 2"):
            ghostability(x, ratio=r)
    with pytest.raises(ValueError, match="d must be a positive odd int"):
        ghostability(x, d=2)
    with pytest.raises(GhostmapsError, match="split=None"):
        ghostability(x[:1])  # one image cannot be split
    with pytest.raises(GhostmapsError, match="split must be"):
        ghostability(x, split=1.0)
    with pytest.raises(GhostmapsError, match="heldout maps must match"):
        ghostability(x, heldout=torch.randn(2, 3, 5, 5))
    with pytest.raises(GhostmapsError, match="groups"):
        ghostability(x, groups=["a"])
    with pytest.raises(GhostmapsError, match="method"):
        ghostability(x, choice="best")
