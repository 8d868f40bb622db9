"""Tests for analysis.reconstruct, checked against independent computations (planted kernels, numpy lstsq on
an explicit design matrix, Adam-trained convs, brute-force pair loops, an explicit GhostModule forward)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from analysis.reconstruct import (
    best_sources,
    fit_cheap_op,
    ghostability,
    reconstruction_table,
    suggest_ratio,
)


def smooth_maps(shape, seed=0, relu=False):
    """Random maps with spatial structure: Gaussian noise blurred by a 5x5 box filter (float64)."""
    g = torch.Generator().manual_seed(seed)
    *lead, h, w = shape
    x = torch.randn(int(np.prod(lead)), 1, h + 4, w + 4, generator=g, dtype=torch.float64)
    x = F.conv2d(x, torch.ones(1, 1, 5, 5, dtype=torch.float64) / 25).reshape(*lead, h, w)
    x = x + 0.3 * torch.randn(*lead, h, w, generator=g, dtype=torch.float64)
    return torch.relu(x) if relu else x


def conv(x, kernel, bias, d):
    """x: N x H x W -> conv2d with one d x d kernel (cross-correlation, zero padding d//2)."""
    k = torch.as_tensor(kernel, dtype=torch.float64).reshape(1, 1, d, d)
    return F.conv2d(x[:, None].double(), k, torch.tensor([float(bias)], dtype=torch.float64), padding=d // 2)[:, 0]


def planted_layer(n_base, ratio, d=3, seed=0, n=4, hw=(14, 13)):
    """A layer of n_base groups: a base channel plus ratio-1 exact ghosts conv(base, K) + b, channels shuffled.
    Returns maps, group id per channel, base channel index per group."""
    g = torch.Generator().manual_seed(seed + 100)
    base = smooth_maps((n, n_base, *hw), seed=seed)
    chans, group, is_base = [], [], []
    for b in range(n_base):
        chans.append(base[:, b])
        group.append(b)
        is_base.append(True)
        for _ in range(ratio - 1):
            k = torch.randn(d, d, generator=g, dtype=torch.float64)
            chans.append(conv(base[:, b], k, float(torch.randn(1, generator=g)), d))
            group.append(b)
            is_base.append(False)
    perm = np.random.default_rng(seed).permutation(len(chans))
    maps = torch.stack([chans[p] for p in perm], dim=1)
    groups = np.array(group)[perm]
    bases = {int(groups[k]): int(k) for k in range(len(perm)) if is_base[perm[k]]}
    return maps, groups, bases


# ------------------------------------------------------------------------------------------------ fit_cheap_op


@pytest.mark.parametrize("d", [1, 3, 5])
def test_fit_recovers_planted_kernel_and_bias(d):
    src = smooth_maps((3, 11, 9), seed=d)
    kernel = torch.randn(d, d, generator=torch.Generator().manual_seed(d), dtype=torch.float64)
    dst = conv(src, kernel, -0.4, d)
    fit = fit_cheap_op(src, dst, d=d)
    assert fit.kernel.shape == (d, d)
    np.testing.assert_allclose(fit.kernel, kernel.numpy(), atol=1e-5)
    assert abs(fit.bias + 0.4) < 1e-5
    assert fit.mse < 1e-10 and fit.rel_error < 1e-9 and fit.r2 > 1 - 1e-9
    np.testing.assert_allclose(fit.predict(src).numpy(), dst.numpy(), atol=1e-5)


@pytest.mark.parametrize("d", [1, 3, 5])
def test_fit_batched_recovers_each_pair(d):
    p = 4
    src = smooth_maps((p, 2, 10, 12), seed=7)
    g = torch.Generator().manual_seed(1)
    kernels = torch.randn(p, d, d, generator=g, dtype=torch.float64)
    biases = torch.randn(p, generator=g, dtype=torch.float64)
    dst = torch.stack([conv(src[k], kernels[k], biases[k], d) for k in range(p)])
    fit = fit_cheap_op(src.float(), dst.float(), d=d)  # float32 input is fine
    assert fit.batched and fit.kernel.shape == (p, d, d) and fit.mse.shape == (p,)
    np.testing.assert_allclose(fit.kernel, kernels.numpy(), atol=1e-3)
    np.testing.assert_allclose(fit.bias, biases.numpy(), atol=1e-3)
    assert np.all(fit.rel_error < 1e-6)
    # each batched fit equals its single fit
    for k in range(p):
        single = fit_cheap_op(src[k].float(), dst[k].float(), d=d)
        np.testing.assert_allclose(fit.kernel[k], single.kernel, atol=1e-8)
        assert math.isclose(fit.mse[k], single.mse, rel_tol=1e-6, abs_tol=1e-12)


def design_matrix(src, d, bias):
    """Explicit regression matrix: one row per (n, h, w), one column per kernel tap (u, v) (+ ones)."""
    n, h, w = src.shape
    p = d // 2
    xp = np.pad(src, ((0, 0), (p, p), (p, p)))
    rows = []
    for a in range(n):
        for r in range(h):
            for c in range(w):
                row = [xp[a, r + u, c + v] for u in range(d) for v in range(d)]
                rows.append(row + ([1.0] if bias else []))
    return np.array(rows)


@pytest.mark.parametrize("d,bias", [(3, True), (5, True), (3, False)])
def test_fit_matches_numpy_lstsq(d, bias):
    src = smooth_maps((2, 7, 10), seed=3, relu=True).numpy()
    dst = smooth_maps((2, 7, 10), seed=4).numpy() + 0.5 * np.roll(src, 1, axis=2)
    a = design_matrix(src, d, bias)
    sol, *_ = np.linalg.lstsq(a, dst.reshape(-1), rcond=None)
    resid = dst.reshape(-1) - a @ sol
    fit = fit_cheap_op(src, dst, d=d, bias=bias)  # numpy in
    np.testing.assert_allclose(fit.kernel.reshape(-1), sol[: d * d], atol=1e-6)
    if bias:
        assert abs(fit.bias - sol[-1]) < 1e-6
    else:
        assert fit.bias == 0.0
    assert math.isclose(fit.mse, float(np.mean(resid**2)), rel_tol=1e-6)
    assert math.isclose(fit.rel_error, float(np.sum(resid**2) / np.sum((dst - dst.mean()) ** 2)), rel_tol=1e-6)


def test_fit_never_worse_than_adam_trained_conv():
    src = smooth_maps((2, 12, 12), seed=11)
    dst = conv(src, torch.tensor([[0.1, 0.5, 0.0], [0.2, -0.3, 0.4], [0.0, 0.1, 0.2]]), 0.3, 3)
    dst = dst + 0.1 * smooth_maps((2, 12, 12), seed=12)
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 1, 3, padding=1, groups=1).double()
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        loss = F.mse_loss(net(src[:, None]), dst[:, None])
        loss.backward()
        opt.step()
    with torch.no_grad():
        adam_mse = F.mse_loss(net(src[:, None]), dst[:, None]).item()
    fit = fit_cheap_op(src, dst, d=3)
    assert fit.mse <= adam_mse + 1e-10
    assert fit.mse < 0.9 * F.mse_loss(src, dst).item()  # the fit is not trivially zero either


def test_fit_degenerate_sources_and_targets_no_nan():
    n, h, w = 2, 6, 5
    z = torch.zeros(n, h, w)
    const = torch.full((n, h, w), 2.5)
    live = smooth_maps((n, h, w), seed=5)
    # dead source: the op can only give the mean, relative error 1
    f = fit_cheap_op(z, live, d=3)
    assert np.allclose(f.kernel, 0) and math.isclose(f.rel_error, 1.0, rel_tol=1e-9)
    assert math.isclose(f.bias, live.mean().item(), rel_tol=1e-9)
    # constant target: made exactly by the bias, relative error defined as 0
    for s in (z, const, live):
        f = fit_cheap_op(s, const, d=3)
        assert f.rel_error == 0.0 and f.r2 == 1.0 and f.mse < 1e-20
    # dead target, no bias: still exact
    f = fit_cheap_op(live, z, d=3, bias=False)
    assert f.rel_error == 0.0 and f.mse == 0.0
    # constant target without bias from a dead source: not exact, error finite and large
    f = fit_cheap_op(z, const, d=3, bias=False)
    assert math.isfinite(f.rel_error) and f.rel_error > 1
    # constant source with d=1 (collinear with the bias column) and 1x1 maps
    f = fit_cheap_op(const, live, d=1)
    assert np.all(np.isfinite(f.kernel)) and math.isclose(f.rel_error, 1.0, rel_tol=1e-6)
    f = fit_cheap_op(torch.randn(3, 1, 1), torch.randn(3, 1, 1), d=5)
    assert np.all(np.isfinite(f.kernel)) and 0 <= f.rel_error <= 1 + 1e-9


def test_fit_does_not_mutate_inputs_and_to_dict_is_json():
    src = smooth_maps((2, 5, 5), seed=1).float()
    dst = smooth_maps((2, 5, 5), seed=2).float()
    s0, d0 = src.clone(), dst.clone()
    f = fit_cheap_op(src, dst)
    assert torch.equal(src, s0) and torch.equal(dst, d0)
    back = json.loads(json.dumps(f.to_dict()))
    assert back["d"] == 3 and len(back["kernel"]) == 3 and math.isclose(back["mse"], f.mse)


@pytest.mark.parametrize("d", [0, 2, 4, -3, 3.0, True])
def test_fit_rejects_bad_d(d):
    x = torch.randn(2, 5, 5)
    with pytest.raises(ValueError, match="d must be a positive odd int"):
        fit_cheap_op(x, x, d=d)


def test_fit_rejects_bad_shapes_and_values():
    x = torch.randn(2, 5, 5)
    with pytest.raises(ValueError, match="dst must have the same shape as src"):
        fit_cheap_op(x, torch.randn(3, 5, 5))
    with pytest.raises(ValueError, match="src must be"):
        fit_cheap_op(torch.randn(5), torch.randn(5))
    bad = x.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="dst contains NaN"):
        fit_cheap_op(x, bad)
    with pytest.raises(ValueError, match="ridge"):
        fit_cheap_op(x, x, ridge=-1.0)
    with pytest.raises(TypeError, match="src must be a torch.Tensor"):
        fit_cheap_op([[1.0]], [[1.0]])


# ------------------------------------------------------------------------------------------------ best_sources


def test_best_sources_matches_brute_force_loops():
    c = 6
    x = smooth_maps((3, c, 9, 8), seed=21, relu=True)
    x[:, 4] = 0.0  # dead channel
    x[:, 1] = conv(x[:, 3], torch.randn(3, 3, generator=torch.Generator().manual_seed(0)), 0.2, 3) + 0.05 * x[:, 0]
    res = best_sources(x, d=3, exclude=[5])
    brute = np.full((c, c), np.inf)
    fits = {}
    for i in range(c):
        for j in range(c):
            if i != j and i not in (4, 5):
                fits[i, j] = fit_cheap_op(x[:, i], x[:, j], d=3)
                brute[i, j] = fits[i, j].rel_error
    np.testing.assert_allclose(res.error_matrix, brute, rtol=1e-7, atol=1e-10)
    assert res.dead.tolist() == [False, False, False, False, True, False]
    for j in range(c):
        if j == 4:
            assert res.source[j] == -1 and res.rel_error[j] == 0.0 and res.bias[j] == 0.0
            continue
        i = int(np.argmin(brute[:, j]))
        assert res.source[j] == i
        assert math.isclose(res.rel_error[j], fits[i, j].rel_error, rel_tol=1e-7)
        assert math.isclose(res.mse[j], fits[i, j].mse, rel_tol=1e-7)
        np.testing.assert_allclose(res.kernel[j], fits[i, j].kernel, atol=1e-8)
        assert math.isclose(res.bias[j], fits[i, j].bias, rel_tol=1e-7, abs_tol=1e-10)
    assert res.source[1] == 3 and res.rel_error[1] < 0.05
    assert json.loads(json.dumps(res.to_dict()))["source"] == res.source.tolist()
    assert "(dead)" in str(res)


def test_best_sources_degenerate_layers():
    one = best_sources(torch.randn(2, 1, 4, 4))  # C = 1: no possible source
    assert one.source.tolist() == [-1] and one.rel_error.tolist() == [1.0]
    tiny = best_sources(np.random.default_rng(0).random((3, 4, 1, 1)).astype(np.float16), d=3)
    assert np.all(np.isfinite(tiny.rel_error)) and np.all(tiny.source >= 0)
    with pytest.raises(ValueError, match="exclude"):
        best_sources(torch.randn(1, 3, 4, 4), exclude=[7])
    with pytest.raises(ValueError, match="maps must be"):
        best_sources(torch.randn(4, 4))


# ------------------------------------------------------------------------------------------------ ghostability


def ghost_module_forward(maps, g):
    """What a GhostModule initialised from ``g`` outputs: primary = intrinsic maps, cheap = depthwise conv with
    channel multiplier ratio-1 (groups = m), concatenated and cut to C channels."""
    primary = maps[:, g.intrinsic].double()
    w, b = g.cheap_weights()
    cheap = F.conv2d(primary, w.double(), b.double(), padding=g.d // 2, groups=len(g.intrinsic))
    return torch.cat([primary, cheap], dim=1)[:, : maps.shape[1]]


def module_error(maps, g):
    """Overall relative error of the GhostModule output against the original channels, in module order."""
    target = maps[:, g.module_order].double()
    out = ghost_module_forward(maps, g)
    ss = ((target - target.mean(dim=(0, 2, 3), keepdim=True)) ** 2).sum()
    return (((out - target) ** 2).sum() / ss).item()


@pytest.mark.parametrize("ratio", [2, 3])
def test_ghostability_planted_groups(ratio):
    maps, groups, bases = planted_layer(n_base=4, ratio=ratio)
    g = ghostability(maps, ratio=ratio, d=3)
    c = maps.shape[1]
    assert len(g.intrinsic) == math.ceil(c / ratio) == 4
    assert g.overall_error < 1e-6
    assert sorted(g.intrinsic) == sorted(bases.values())  # exactly the base channels, one per group
    for ghost, src in g.assignment.items():
        assert groups[ghost] == groups[src]
    assert abs(module_error(maps, g) - g.overall_error) < 1e-6
    # one ratio too many: the groups cannot all be covered
    worse = ghostability(maps, ratio=ratio + 2, d=3)
    assert worse.overall_error > 0.05


@pytest.mark.parametrize("c,ratio", [(7, 2), (10, 4), (9, 3), (5, 8), (11, 3)])
def test_ghostability_structure_is_a_ghost_module(c, ratio):
    maps = smooth_maps((2, c, 8, 7), seed=c + ratio, relu=True)
    g = ghostability(maps, ratio=ratio, d=3)
    m = math.ceil(c / ratio)
    assert len(g.intrinsic) == m and len(set(g.intrinsic)) == m
    assert sorted(g.module_order) == list(range(c))
    assert set(g.assignment) == set(range(c)) - set(g.intrinsic)
    loads = [len(s) for s in g.slots]
    assert max(loads) <= ratio - 1  # capacity
    assert all(n == ratio - 1 for n in loads[:-1])  # only the last intrinsic may be short
    assert sum(loads) == c - m
    for p, s in enumerate(g.slots):
        assert all(g.assignment[k] == g.intrinsic[p] for k in s)
    # the reported error is what the GhostModule computes, and what predict() gives
    assert abs(module_error(maps, g) - g.overall_error) < 1e-6
    rec = g.predict(maps)
    np.testing.assert_allclose(rec[:, g.module_order].numpy(), ghost_module_forward(maps, g).numpy(), atol=1e-5)
    assert np.all(g.rel_error[g.intrinsic] == 0)
    assert 0 <= g.overall_error <= 1 + 1e-9
    json.dumps(g.to_dict())
    assert "overall_error" in str(g)


def test_ghostability_degenerate_inputs_no_nan():
    maps, _, _ = planted_layer(n_base=3, ratio=2, hw=(6, 6))
    maps = torch.cat([maps, torch.zeros(4, 2, 6, 6, dtype=maps.dtype)], dim=1)  # two dead channels
    g = ghostability(maps, ratio=2)
    assert g.dead.tolist()[-2:] == [True, True]
    assert np.all(np.isfinite(g.rel_error)) and g.overall_error < 1e-6
    assert g.rel_error[-1] == 0 and g.rel_error[-2] == 0
    for x, ratio in [
        (torch.randn(3, 1, 5, 5), 2),  # C = 1
        (torch.randn(5, 6, 1, 1), 2),  # 1x1 spatial
        (torch.zeros(2, 4, 3, 3), 2),  # all dead
        (smooth_maps((2, 6, 8, 8), seed=3, relu=True).half(), 3),  # fp16
        (torch.full((2, 3, 4, 4), 7.0), 2),  # constant channels
    ]:
        g = ghostability(x, ratio=ratio, d=3)
        assert np.all(np.isfinite(g.rel_error)) and math.isfinite(g.overall_error)
        assert np.all(np.isfinite(g.kernel)) and np.all(np.isfinite(g.bias))
        assert 0 <= g.overall_error <= 1 + 1e-6
        assert abs(module_error(x.double(), g) - g.overall_error) < 1e-5 or g.overall_error == 0


def test_ghostability_rejects_bad_input():
    x = torch.randn(2, 4, 5, 5)
    for r in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="ratio must be an int >= 2"):
            ghostability(x, ratio=r)
    with pytest.raises(ValueError, match="d must be a positive odd int"):
        ghostability(x, d=2)


def test_suggest_ratio_planted():
    maps, _, _ = planted_layer(n_base=4, ratio=3, hw=(10, 10))  # C = 12, groups of 3
    s = suggest_ratio(maps, max_error=0.01, ratios=(2, 3, 4, 6), d=3)
    assert s.ratio == 3
    assert s.errors[3] < 0.01 and s.errors[4] > 0.01 and s.errors[6] > 0.01
    # ratio 2 is not exact either: 6 intrinsic maps with one ghost each cannot cover 4 groups of 3
    assert s.errors[2] > 0.01
    assert s.ghostability is not None and s.ghostability.ratio == 3
    assert json.loads(json.dumps(s.to_dict()))["ratio"] == 3
    none = suggest_ratio(smooth_maps((2, 6, 8, 8), seed=9), max_error=0.0, ratios=(2,))
    assert none.ratio is None and none.ghostability is None and none.errors[2] > 0
    with pytest.raises(ValueError, match="ratio"):
        suggest_ratio(maps, ratios=(1, 2))
    with pytest.raises(ValueError, match="max_error"):
        suggest_ratio(maps, max_error=-0.1)


# ------------------------------------------------------------------------------------------------ Table 1


def test_reconstruction_table(tmp_path):
    x = smooth_maps((3, 8, 12, 12), seed=30, relu=True)
    x[:, 2] = conv(x[:, 5], torch.tensor([[0.0, 0.2, 0.0], [0.3, 0.8, -0.1], [0.0, 0.1, 0.0]]), 0.1, 3)
    holder = SimpleNamespace(pairs=[SimpleNamespace(i=5, j=2), SimpleNamespace(i=0, j=1)])
    t = reconstruction_table(x, holder, ds=(1, 3, 5), n_random=20, seed=1)
    assert t.ds == (1, 3, 5) and t.n_random == 20
    pair_rows = {(r["src"], r["dst"], r["d"]): r for r in t.rows() if r["kind"] == "pair"}
    rand_rows = {r["d"]: r for r in t.rows() if r["kind"] == "random"}
    assert len(pair_rows) == 6 and set(rand_rows) == {1, 3, 5}
    for (i, j, d), r in pair_rows.items():
        f = fit_cheap_op(x[:, i], x[:, j], d=d)
        assert math.isclose(r["mse"], f.mse, rel_tol=1e-7) and math.isclose(r["rel_error"], f.rel_error, rel_tol=1e-7)
    # planted pair: exact from d = 3 on, and far below the random baseline; nested kernels never get worse
    assert pair_rows[5, 2, 1]["rel_error"] > 1e-3
    assert pair_rows[5, 2, 3]["rel_error"] < 1e-8 and pair_rows[5, 2, 5]["rel_error"] < 1e-8
    assert rand_rows[3]["rel_error"] > 0.1
    e = [pair_rows[0, 1, d]["rel_error"] for d in (1, 3, 5)]
    assert e[0] >= e[1] - 1e-9 >= e[2] - 2e-9
    # the baseline is the mean over random pairs of different channels: within the range of all pair errors
    for d in (1, 3, 5):
        all_rel = [fit_cheap_op(x[:, i], x[:, j], d=d).rel_error for i in range(8) for j in range(8) if i != j]
        assert min(all_rel) <= rand_rows[d]["rel_error"] <= max(all_rel)
    same = reconstruction_table(x, [(5, 2), (0, 1)], ds=(1, 3, 5), n_random=20, seed=1)
    assert same.rows() == t.rows()
    # exports
    back = json.loads(t.to_json())
    assert len(back["rows"]) == len(t.rows()) and back["rows"][-1]["src"] is None
    frame = t.to_frame()
    assert list(frame.columns) == ["kind", "src", "dst", "d", "mse", "rel_error", "r2", "n"] and len(frame) == 9
    path = tmp_path / "t.csv"
    t.to_csv(path)
    lines = path.read_text().splitlines()
    assert lines[0] == "kind,src,dst,d,mse,rel_error,r2,n" and len(lines) == 10
    text = str(t)
    assert "5 -> 2" in text and "random (n=20)" in text and "d=5" in text


def test_reconstruction_table_bad_input():
    x = torch.randn(2, 4, 6, 6)
    with pytest.raises(ValueError, match="maps a channel to itself"):
        reconstruction_table(x, [(1, 1)])
    with pytest.raises(ValueError, match="not an int in"):
        reconstruction_table(x, [(0, 9)])
    with pytest.raises(ValueError, match=r"\(i, j\)"):
        reconstruction_table(x, [(0, 1, 2)])
    with pytest.raises(ValueError, match="each of ds must be a positive odd int"):
        reconstruction_table(x, [(0, 1)], ds=(1, 2))
    with pytest.raises(ValueError, match="n_random"):
        reconstruction_table(x, [(0, 1)], n_random=-1)
    with pytest.raises(ValueError, match="maps must be"):
        reconstruction_table(torch.randn(6, 6), [(0, 1)])
