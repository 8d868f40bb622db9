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
    reconstruction_table,
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


# ------------------------------------------------------------------------------------------------ Table 1


def _heldout_rel(fit_x, eval_x, i, j, d):
    """Independent held-out error: fit one op on the fit images, apply it to the held-out ones by conv2d."""
    f = fit_cheap_op(fit_x[:, i], fit_x[:, j], d=d)
    y = eval_x[:, j].double()
    pred = conv(eval_x[:, i], f.kernel, f.bias, d)
    return float(((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum()), f.rel_error


def test_reconstruction_table_is_held_out(tmp_path):
    from analysis.reconstruct import split_maps

    x = smooth_maps((6, 8, 12, 12), seed=30, relu=True)
    x[:, 2] = conv(x[:, 5], torch.tensor([[0.0, 0.2, 0.0], [0.3, 0.8, -0.1], [0.0, 0.1, 0.0]]), 0.1, 3)
    holder = SimpleNamespace(pairs=[SimpleNamespace(i=5, j=2), SimpleNamespace(i=0, j=1)])
    t = reconstruction_table(x, holder, ds=(1, 3, 5), n_random=20, seed=1)
    assert t.ds == (1, 3, 5) and t.n_random == 20 and t.pairs_from == "given"
    assert t.split.kind == "seeded split" and t.split.n_fit == 3 and t.split.n_eval == 3
    fit_x, eval_x, _ = split_maps(x, split=0.5, seed=1)
    pair_rows = {(r["src"], r["dst"], r["d"]): r for r in t.rows() if r["kind"] == "pair"}
    rand_rows = {r["d"]: r for r in t.rows() if r["kind"] == "random"}
    assert len(pair_rows) == 6 and set(rand_rows) == {1, 3, 5}
    for (i, j, d), r in pair_rows.items():
        held, fit_rel = _heldout_rel(fit_x, eval_x, i, j, d)
        assert r["rel_error"] == pytest.approx(held, rel=1e-7, abs=1e-12)
        assert r["rel_error_fit"] == pytest.approx(fit_rel, rel=1e-7, abs=1e-12)
        assert r["rel_error_low"] <= r["rel_error"] <= r["rel_error_high"] or r["rel_error"] < 1e-9
    # the planted pair is exact held out from d = 3 on, far below the random baseline
    assert pair_rows[5, 2, 1]["rel_error"] > 1e-3
    assert pair_rows[5, 2, 3]["rel_error"] < 1e-8 and pair_rows[5, 2, 5]["rel_error"] < 1e-8
    assert rand_rows[3]["rel_error"] > 0.1 and rand_rows[3]["rel_error_low"] < rand_rows[3]["rel_error"]
    back = json.loads(t.to_json())
    assert len(back["rows"]) == len(t.rows()) and back["rows"][-1]["src"] is None and "not comparable" in back["mse_note"]
    assert type(t).from_dict(back).to_dict() == t.to_dict()
    frame = t.to_frame()
    assert list(frame.columns)[:5] == ["kind", "src", "dst", "d", "rel_error"] and "mse_raw" in frame
    text = t.to_csv(tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text() == text and len(text.splitlines()) == 10
    out = str(t)
    assert "5 -> 2" in out and "random (n=20)" in out and "held-out" in out and "not comparable" in out


def test_reconstruction_table_chooses_pairs_on_the_fit_images_only():
    x = smooth_maps((8, 6, 9, 9), seed=2, relu=True)
    t = reconstruction_table(x, 2, ds=(3,), n_random=0, metric="pearson", seed=3)
    from analysis import channel_similarity, ghost_pairs
    from analysis.reconstruct import split_maps

    fit_x, _, _ = split_maps(x, seed=3)
    want = [(p.i, p.j) for p in ghost_pairs(channel_similarity(fit_x, metric="pearson"), k=2)]
    assert [(r["src"], r["dst"]) for r in t.rows()] == want and "pearson on the fit images" in t.pairs_from
    assert len(reconstruction_table(x, 1, ds=(3,), n_random=0, metric="r2").rows()) == 1


def test_held_out_d_curve_prefers_d3_on_small_noisy_maps():
    """On 7 x 7 maps with noise, a 7 x 7 op fits in-sample at least as well as a 3 x 3 one, and loses held out."""
    g = torch.Generator().manual_seed(4)
    base = smooth_maps((24, 7, 7), seed=8)
    ghost = conv(base, torch.tensor([[0.1, 0.6, 0.1], [0.2, 1.0, 0.2], [0.1, 0.4, 0.1]]), 0.0, 3)
    ghost = ghost + 0.4 * torch.randn(ghost.shape, generator=g, dtype=torch.float64)
    x = torch.stack([base, ghost], 1)
    t = reconstruction_table(x[:4], [(0, 1)], ds=(3, 7), n_random=0, heldout=x[4:])
    r3, r7 = (next(r for r in t.rows() if r["d"] == d) for d in (3, 7))
    assert r7["rel_error_fit"] <= r3["rel_error_fit"] + 1e-12
    assert r7["rel_error"] > r3["rel_error"]


def test_reconstruction_table_flags_sparse_pairs():
    """A pair with a channel zero on most positions (APoZ ≥ 0.8, counted by hand on the fit images) is flagged
    in the rows and marked in the printed table; a dense pair is not."""
    x = smooth_maps((12, 4, 8, 8), seed=5).float()
    x[:, 2] = torch.where(x[:, 2] > x[:, 2].quantile(0.9), x[:, 2], torch.zeros(()))  # ~90 % zeros
    t = reconstruction_table(x, [(0, 1), (2, 3)], ds=(3,), n_random=2, seed=0)
    rows = {(r["src"], r["dst"]): r for r in t.rows() if r["kind"] == "pair"}
    fit = x[[i for i in range(12) if i not in t.split.eval_index]]
    apoz = (fit.abs() <= 1e-6).double().mean(dim=(0, 2, 3))
    assert apoz[2] >= 0.8 > max(apoz[0], apoz[1], apoz[3])
    assert rows[(2, 3)]["sparse"] is True and rows[(0, 1)]["sparse"] is False
    assert [r["sparse"] for r in t.rows() if r["kind"] == "random"] == [None]
    text = str(t)
    assert "2 -> 3 *" in text and "0 -> 1 *" not in text and "* sparse" in text
    assert type(t).from_dict(t.to_dict()).rows() == t.rows()


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
    with pytest.raises(ValueError, match="metric"):
        reconstruction_table(x, 2, metric="spearman")
    with pytest.raises(ValueError, match="split=None"):
        reconstruction_table(x[:1], [(0, 1)])
