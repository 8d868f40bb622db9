"""The refit's ridge pulled toward the starting point (``GhostFit.anchor``, ``SequentialSettings(prior="start")``),
against an independent augmented least squares: ``min |t - X w|^2 + lam |w - w0|^2`` is the plain least squares
of ``[X; sqrt(lam) I] w = [t; sqrt(lam) w0]``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from analysis.convert import GhostifyError, ghostify
from analysis.convert.refit import GhostFit, Moments, gather_patches, sample_positions
from analysis.convert.sequential import PRIORS, SequentialSettings


def _data(seed: int = 0, n: int = 3, positions: int = 10**6):
    torch.manual_seed(seed)
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False).double()
    x = torch.randn(n, 4, 6, 5, dtype=torch.float64)
    with torch.no_grad():
        y = conv(x) + 0.3 * torch.randn(n, 6, 6, 5, dtype=torch.float64)
    pos = torch.stack([sample_positions(6, 5, positions, 0, 0, i) for i in range(n)])
    v = gather_patches(conv, x, pos, 3).double()
    yf = torch.gather(y.flatten(2), 2, pos[:, None, :].expand(n, 6, -1)).transpose(1, 2).reshape(-1, 6)
    return v, yf


def _fit(v: torch.Tensor, rng: np.random.Generator) -> GhostFit:
    w0 = torch.as_tensor(rng.normal(size=(3, v.shape[2])))
    k0 = torch.as_tensor(rng.normal(size=(3, 9)))
    return GhostFit([0, 2, 4], [1, 3, 5], [0, 1, 2], w0, k0, torch.zeros(3, dtype=torch.float64))


def _anchored_lstsq(x: np.ndarray, t: np.ndarray, w0: np.ndarray, ridge: float) -> np.ndarray:
    lam = ridge * float((x * x).sum()) / x.shape[1]
    aug = np.vstack([x, np.sqrt(lam) * np.eye(x.shape[1])])
    return np.linalg.lstsq(aug, np.concatenate([t, np.sqrt(lam) * w0]), rcond=None)[0]


def _primary_design(v, y, fit, k, weights):
    """Filter k's stacked rows: the intrinsic channel uncentred, each ghost centred (its bias is free)."""
    v, y, w = v.numpy(), y.numpy(), weights.numpy()
    a = fit.intrinsic[k]
    rows, targets = [np.sqrt(w[a]) * v[:, 4]], [np.sqrt(w[a]) * y[:, a]]
    for g in [g for g, s in enumerate(fit.source) if s == k]:
        j = fit.ghosts[g]
        f = np.einsum("ntA,t->nA", v, fit.kernel[g].numpy())
        rows.append(np.sqrt(w[j]) * (f - f.mean(0)))
        targets.append(np.sqrt(w[j]) * (y[:, j] - y[:, j].mean()))
    return np.vstack(rows), np.concatenate(targets)


@pytest.mark.parametrize("form,positions", [("gram", 10**6), ("direct", 10**6), ("direct", 2)],
                         ids=["gram", "direct-normal", "direct-dual"])
def test_anchored_steps_are_the_augmented_least_squares(form, positions):
    v, y = _data(positions=positions)
    rng = np.random.default_rng(3)
    fit = _fit(v, rng)
    fit.anchor()
    w0, k0 = fit.weight0.clone(), fit.kernel0.clone()
    weights = torch.as_tensor(rng.uniform(0.5, 2.0, size=6))
    ridge = 0.3
    mo = Moments(9, v.shape[2], 6)
    mo.add(v, y)
    if form == "gram":
        fit.primary_step(mo, weights, ridge)
    else:
        fit.primary_step_direct(v, y, weights, ridge)
    start = GhostFit(fit.intrinsic, fit.ghosts, fit.source, w0, k0, fit.bias)
    for k in range(3):
        x, t = _primary_design(v, y, start, k, weights)
        np.testing.assert_allclose(fit.weight[k].numpy(), _anchored_lstsq(x, t, w0[k].numpy(), ridge),
                                   rtol=1e-4, atol=1e-6)
    if form == "gram":
        fit.cheap_step(mo, ridge)
    else:
        fit.cheap_step_direct(v, y, ridge)
    for g, j in enumerate(fit.ghosts):
        u = np.einsum("ntA,A->nt", v.numpy(), fit.weight[fit.source[g]].numpy())
        t = y[:, j].numpy()
        kern = _anchored_lstsq(u - u.mean(0), t - t.mean(), k0[g].numpy(), ridge)
        np.testing.assert_allclose(fit.kernel[g].numpy(), kern, rtol=1e-4, atol=1e-6)
        assert float(fit.bias[g]) == pytest.approx(float((t - u @ kern).mean()), rel=1e-4, abs=1e-6)


def test_uncovered_inputs_keep_the_starting_filter():
    """An input channel that is zero in every calibration image: the anchored refit keeps the start's weights on
    it, the refit toward zero erases them (what the pretrained network does with that channel is lost)."""
    v, y = _data()
    dead = slice(0, 9)  # input channel 0's 3 x 3 taps, in the (c, u, v) order
    v[:, :, dead] = 0
    rng = np.random.default_rng(5)
    weights = torch.ones(6, dtype=torch.float64)
    mo = Moments(9, v.shape[2], 6)
    mo.add(v, y)
    zero = _fit(v, rng)
    start = GhostFit(zero.intrinsic, zero.ghosts, zero.source, zero.weight.clone(), zero.kernel.clone(), zero.bias)
    start.anchor()
    w0 = start.weight.clone()
    for f in (zero, start):
        f.primary_step(mo, weights, 1e-2)
    torch.testing.assert_close(start.weight[:, dead], w0[:, dead])
    assert float(zero.weight[:, dead].abs().max()) < 1e-9 < float(w0[:, dead].abs().max())


def test_prior_setting_reaches_the_fit_is_recorded_and_is_validated():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
    net.eval()
    x = torch.randn(4, 3, 8, 8)
    out = {}
    for prior in PRIORS:
        st = SequentialSettings(holdout=0.0, ridge=10.0, prior=prior)
        new, res = ghostify(net, layers="2", init="fit", calibration_images=x, settings=st, min_channels=0)
        out[prior] = new[2].primary.weight.detach(), res.replaced[0].intrinsic
        # the result records the settings it was fitted with, prints them and keeps them through JSON
        assert res.settings["prior"] == prior and res.settings["ridge"] == 10.0
        assert f"ridge 10.0 toward {prior}" in str(res)
        assert type(res).from_dict(json.loads(res.to_json())).settings == res.settings
    # a heavy ridge: toward zero the filters shrink, toward the start they stay near the original filters
    orig = net[2].weight.detach()
    near = {p: float((w - orig[keep]).norm()) for p, (w, keep) in out.items()}
    assert near["start"] < 0.5 * near["zero"]
    with pytest.raises(GhostifyError, match="prior.*'zero', 'start'"):
        SequentialSettings(prior="pretrained")


@pytest.mark.parametrize("anchored", [False, True], ids=["to-zero", "to-start"])
def test_ridge_zero_is_the_least_squares_nearest_the_prior_in_the_gram_form(anchored):
    """A rank-deficient Gram (fewer positions than unknowns, and a dead input channel): ridge 0 gives lstsq's
    minimum-norm answer, shifted to the start when anchored, as the dual form does, not an arbitrary one of the
    many least-squares solutions (a tiny absolute ridge on a Gram with rounding noise in its null space)."""
    v, y = _data(1, positions=2)
    v[:, :, 9:18] = 0  # input channel 1's taps
    rng = np.random.default_rng(2)
    fit = _fit(v, rng)
    if anchored:
        fit.anchor()
    w0 = fit.weight.clone() if anchored else torch.zeros_like(fit.weight)
    start = GhostFit(fit.intrinsic, fit.ghosts, fit.source, fit.weight.clone(), fit.kernel.clone(), fit.bias)
    weights = torch.ones(6, dtype=torch.float64)
    mo = Moments(9, v.shape[2], 6)
    mo.add(v, y)
    fit.primary_step(mo, weights, 0.0)
    for k in range(3):
        x, t = _primary_design(v, y, start, k, weights)
        want = w0[k].numpy() + np.linalg.lstsq(x, t - x @ w0[k].numpy(), rcond=None)[0]
        np.testing.assert_allclose(fit.weight[k].numpy(), want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fit.weight[:, 9:18], w0[:, 9:18], rtol=0, atol=1e-9)
