"""The sequential fit (analysis.convert.sequential/refit/stepper) and BN re-estimation (analysis.convert.bn),
checked against brute-force least squares on explicitly built design matrices (numpy lstsq) and a hand-run
float64 BatchNorm pass."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analysis.convert import GhostifyError, ghostify
from analysis.convert.bn import reestimate_bn
from analysis.convert.refit import GhostFit, Moments, gather_patches, sample_positions
from analysis.convert.sequential import SequentialSettings, heldout_split, sequential_fit
from analysis.reconstruct import ghostability

EXACT = SequentialSettings(positions=10**6, holdout=0.0, iterations=1, ridge=0.0)


def _patches(conv: nn.Conv2d, x: torch.Tensor) -> np.ndarray:
    """N x D x Hz x Wz patch maps by F.unfold (float64), a ones channel appended for a biased conv."""
    n = x.shape[0]
    cols = F.unfold(x.double(), conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride)
    y = conv(x)
    p = cols.reshape(n, -1, *y.shape[2:])
    if conv.bias is not None:
        p = torch.cat([p, torch.ones(n, 1, *y.shape[2:], dtype=p.dtype)], 1)
    return p.numpy()


def _filtered(p: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Every channel of ``p`` through the zero-padded d x d cross-correlation ``k`` (explicit shifts)."""
    d = k.shape[0]
    r = d // 2
    pad = np.pad(p, ((0, 0), (0, 0), (r, r), (r, r)))
    h, w = p.shape[2:]
    return sum(k[a, b] * pad[:, :, a:a + h, b:b + w] for a in range(d) for b in range(d))


def _rows(m: np.ndarray) -> np.ndarray:
    """N x D x H x W -> (N H W) x D."""
    return m.transpose(0, 2, 3, 1).reshape(-1, m.shape[1])


def _brute_primary(p, y, a, ghosts, kernels, w):
    """min over (W, c_j) of w_a|y_a - W.P|^2 + sum_j w_j |y_j - W.(K_j * P) - c_j|^2 by lstsq."""
    blocks, targets = [], []
    g = len(ghosts)
    x1 = _rows(p)
    blocks.append(np.sqrt(w[a]) * np.hstack([x1, np.zeros((len(x1), g))]))
    targets.append(np.sqrt(w[a]) * y[:, a].reshape(-1))
    for i, (j, k) in enumerate(zip(ghosts, kernels, strict=True)):
        xf = _rows(_filtered(p, k))
        one = np.zeros((len(xf), g))
        one[:, i] = 1.0
        blocks.append(np.sqrt(w[j]) * np.hstack([xf, one]))
        targets.append(np.sqrt(w[j]) * y[:, j].transpose(0, 1, 2).reshape(-1))
    sol = np.linalg.lstsq(np.vstack(blocks), np.concatenate(targets), rcond=None)[0]
    return sol[:p.shape[1]]


def _brute_cheap(z: np.ndarray, target: np.ndarray, d: int) -> tuple[np.ndarray, float]:
    """d x d kernel + bias making ``target`` (N x H x W) from ``z`` (zero padded) by lstsq on explicit shifts."""
    r = d // 2
    pad = np.pad(z, ((0, 0), (r, r), (r, r)))
    h, w = z.shape[1:]
    cols = [pad[:, a:a + h, b:b + w].reshape(-1) for a in range(d) for b in range(d)]
    design = np.stack(cols + [np.ones(z.size)], 1)
    sol = np.linalg.lstsq(design, target.reshape(-1), rcond=None)[0]
    return sol[:-1].reshape(d, d), float(sol[-1])


@pytest.mark.parametrize("geometry", [dict(kernel_size=1), dict(kernel_size=3, stride=2, padding=1, bias=True),
                                      dict(kernel_size=3, padding=2, dilation=2)])
def test_refit_steps_are_the_brute_force_least_squares(geometry):
    """primary_step and cheap_step from streamed moments = lstsq on the explicit stacked design matrices (up to
    the float32 accumulation of the Gram blocks)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 6, bias=geometry.pop("bias", False), **geometry).double()
    x = torch.randn(3, 5, 9, 8, dtype=torch.float64)
    with torch.no_grad():
        y = conv(x) + 0.3 * torch.randn_like(conv(x))  # a target no Ghost conv makes exactly
    d, q = 3, 9
    n, c, hz, wz = y.shape
    pos = torch.stack([sample_positions(hz, wz, 10**6, 0, 0, i) for i in range(n)])
    with torch.no_grad():
        v = gather_patches(conv, x, pos, d)
    mo = Moments(q, v.shape[2], c)
    mo.add(v, y.flatten(2).transpose(1, 2).reshape(-1, c))
    rng = np.random.default_rng(1)
    intrinsic, ghosts, source = [0, 2, 4], [1, 3, 5], [0, 1, 2]
    w0 = torch.randn(3, v.shape[2], dtype=torch.float64)
    k0 = torch.as_tensor(rng.normal(size=(3, q)))
    fit = GhostFit(intrinsic, ghosts, source, w0.clone(), k0.clone(), torch.zeros(3, dtype=torch.float64))
    weights = torch.as_tensor(rng.uniform(0.5, 2.0, size=c))
    fit.primary_step(mo, weights, ridge=0.0)
    p, yn = _patches(conv, x), y.numpy()
    for k, (a, j) in enumerate(zip(intrinsic, ghosts, strict=True)):
        want = _brute_primary(p, yn, a, [j], [k0[k].numpy().reshape(d, d)], weights.numpy())
        np.testing.assert_allclose(fit.weight[k].numpy(), want, rtol=1e-4, atol=1e-6)
    fit.cheap_step(mo, ridge=0.0)
    for k, j in enumerate(ghosts):
        z = np.einsum("ndhw,d->nhw", p, fit.weight[k].numpy())
        kern, bias = _brute_cheap(z, yn[:, j], d)
        np.testing.assert_allclose(fit.kernel[k].numpy().reshape(d, d), kern, rtol=1e-4, atol=1e-6)
        assert float(fit.bias[k]) == pytest.approx(bias, rel=1e-4, abs=1e-6)


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.b = nn.Conv2d(8, 6, 3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(torch.relu(self.stem(x)))))


def _one_iteration(conv: nn.Conv2d, x: torch.Tensor, y: torch.Tensor, choice_maps: torch.Tensor):
    """One brute-force alternation from ghostability's start on ``choice_maps``: primary filters, then kernels."""
    g = ghostability(choice_maps, ratio=2, d=3, split=None)
    p, yn = _patches(conv.double(), x.double()), y.double().numpy()
    w = np.ones(y.shape[1])
    prim, kern = [], []
    for ch, slots in zip(g.intrinsic, g.slots, strict=True):
        wk = _brute_primary(p, yn, ch, slots, [g.kernel[j] for j in slots], w)
        prim.append(wk)
        z = np.einsum("ndhw,d->nhw", p, wk)
        kern += [_brute_cheap(z, yn[:, j], 3)[0] for j in slots]
    return g, np.stack(prim), np.stack(kern)


def test_later_layer_is_fitted_on_the_converted_prefix():
    """Layer b's fitted weights are the brute-force LS on the inputs *of the converted network* (layer a
    already replaced), against the original output; the same LS on the original inputs gives other weights."""
    torch.manual_seed(0)
    net = TwoLayer().eval()
    x = torch.randn(6, 3, 10, 10, generator=torch.Generator().manual_seed(2))
    new, res = ghostify(net, layers=["a", "b"], init="fit", calibration_images=x, settings=EXACT,
                        reestimate_bn=False)
    with torch.no_grad():
        orig_in = torch.relu(net.a(torch.relu(net.stem(x))))
        conv_in = torch.relu(new.a(torch.relu(new.stem(x))))
        target, choice_maps = net.b(orig_in), net.b(orig_in)
    assert float((conv_in - orig_in).abs().max()) > 1e-2  # layer a's replacement really changed b's input
    g, prim, kern = _one_iteration(net.b, conv_in, target, choice_maps)
    assert res.replaced[1].intrinsic == list(g.intrinsic)
    got_w = new.b.primary.weight.detach().double().reshape(len(g.intrinsic), -1).numpy()
    got_b = new.b.primary.bias.detach().double().numpy()
    np.testing.assert_allclose(np.hstack([got_w, got_b[:, None]]), prim, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(new.b.cheap.weight.detach().double().numpy()[:, 0], kern, rtol=1e-3, atol=1e-5)
    _, prim_orig, _ = _one_iteration(net.b, orig_in, target, choice_maps)
    assert np.abs(prim_orig - prim).max() > 100 * 1e-5  # an independent fit would give other weights


def test_planted_ghosts_are_recovered_sequentially():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 1))
    with torch.no_grad():  # channel 2k+1 = 0.5 * channel 2k + 0.3
        net[2].weight[1::2] = 0.5 * net[2].weight[0::2]
        net[2].bias[1::2] = 0.5 * net[2].bias[0::2] + 0.3
    x = torch.randn(6, 3, 10, 10)
    st = SequentialSettings(positions=10**6, holdout=0.34, ridge=0.0)
    new, res = ghostify(net, layers="2", dw_size=1, init="fit", calibration_images=x, settings=st)
    assert res.replaced[0].fit_error < 1e-8 and res.replaced[0].start_error < 1e-8
    with torch.no_grad():
        torch.testing.assert_close(new(x), net(x), rtol=1e-4, atol=1e-4)


def test_ghost_errors_are_the_held_out_channel_errors_measured_directly():
    """The reported ghost errors (pooled and the worst ghost channel's) equal a direct measurement: the kept
    module against the original conv on the held-out images, every position, no BN (weights 1)."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 10, 1)).eval()
    x = torch.randn(9, 3, 8, 8)
    st = SequentialSettings(positions=10**6, holdout=0.34, refit_all=False, seed=2)
    new, res = ghostify(net, layers="2", dw_size=3, init="fit", calibration_images=x, settings=st)
    held = heldout_split(9, 0.34, 2)[0]
    with torch.no_grad():
        h = torch.relu(net[0](x[held]))
        want, got = net[2](h).double(), new[2](h).double()  # N×C×H×W
    sse = ((got - want) ** 2).sum((0, 2, 3))
    ss = ((want - want.mean((0, 2, 3), keepdim=True)) ** 2).sum((0, 2, 3))
    r = res.replaced[0]
    ghosts = [j for j in range(10) if j not in r.intrinsic]
    assert r.ghost_error == pytest.approx(float(sse[ghosts].sum() / ss[ghosts].sum()), rel=1e-4)
    assert r.ghost_error_max == pytest.approx(float((sse[ghosts] / ss[ghosts]).max()), rel=1e-4)
    assert r.ghost_error <= r.ghost_error_max and "worst ghost" in str(res)


def _hand_bn(net: nn.Sequential, batches: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Running mean/var after a train-mode pass with momentum=None, by hand in float64."""
    stats = {1: ([], []), 4: ([], [])}
    for b in batches:
        h = F.conv2d(b.double(), net[0].weight.double(), net[0].bias.double(), padding=1)
        for i in (1, 4):
            mean = h.mean((0, 2, 3))
            var_b = h.var((0, 2, 3), unbiased=False)
            stats[i][0].append(mean)
            stats[i][1].append(h.var((0, 2, 3), unbiased=True))
            bn = net[i]
            h = (h - mean[:, None, None]) / torch.sqrt(var_b[:, None, None] + bn.eps)
            h = h * bn.weight.double()[:, None, None] + bn.bias.double()[:, None, None]
            if i == 1:
                h = F.conv2d(torch.relu(h), net[3].weight.double(), net[3].bias.double(), padding=1)
    return [(torch.stack(stats[i][0]).mean(0), torch.stack(stats[i][1]).mean(0)) for i in (1, 4)]


def _bn_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(), nn.Conv2d(5, 4, 3, padding=1),
                        nn.BatchNorm2d(4), nn.Dropout(0.5))
    with torch.no_grad():
        for i in (1, 4):
            net[i].weight.uniform_(0.5, 2)
            net[i].bias.normal_()
    return net.eval()


def test_reestimate_bn_matches_a_hand_run_pass():
    net = _bn_net()
    x = torch.randn(10, 3, 6, 6, generator=torch.Generator().manual_seed(3))
    assert reestimate_bn(net, x, batch_size=4) == 10
    for i, (mean, var) in zip((1, 4), _hand_bn(net, list(x.split(4))), strict=True):
        torch.testing.assert_close(net[i].running_mean.double(), mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(net[i].running_var.double(), var, rtol=1e-5, atol=1e-6)
        assert net[i].momentum == 0.1
    assert not net.training and not net[5].training  # flags restored


def test_reestimate_bn_after_keeps_earlier_bns():
    net = _bn_net()
    before = net[1].running_mean.clone()
    x = torch.randn(8, 3, 6, 6)
    reestimate_bn(net, x, after=["3"], batch_size=4)
    assert torch.equal(net[1].running_mean, before) and not torch.equal(net[4].running_var, torch.ones(4))


@pytest.mark.parametrize("kwargs,words", [
    ({"batch_size": 1}, ["batch_size", ">= 2"]),
    ({"after": ["nope"]}, ["after", "nope"]),
])
def test_reestimate_bn_bad_input(kwargs, words):
    with pytest.raises(GhostifyError.__mro__[1]) as info:
        reestimate_bn(_bn_net(), torch.randn(4, 3, 6, 6), **kwargs)
    assert all(w in str(info.value) for w in words)


def test_reestimate_bn_needs_two_images():
    with pytest.raises(GhostifyError.__mro__[1], match="at least 2 images"):
        reestimate_bn(_bn_net(), torch.randn(1, 3, 6, 6))


@pytest.mark.parametrize("kwargs,word", [({"positions": 0}, "positions"), ({"holdout": 1.0}, "holdout"),
                                         ({"ridge": -1.0}, "ridge"), ({"iterations": 1.5}, "iterations")])
def test_bad_settings_are_errors(kwargs, word):
    with pytest.raises(GhostifyError, match=word):
        SequentialSettings(**kwargs)


def test_ghostify_with_bn_reestimation_reports_images():
    net = _bn_net()
    x = torch.randn(8, 3, 6, 6)
    new, res = ghostify(net, layers="3", init="fit", calibration_images=x, min_channels=0)
    assert res.bn_images == 0 and torch.equal(new[4].running_var, net[4].running_var)  # off by default
    _, res = ghostify(net, layers="3", init="fit", calibration_images=x, min_channels=0, reestimate_bn=True)
    assert res.bn_images == 8 and res.mode == "sequential"
    assert res.replaced[0].fit_error is not None and 0 <= res.replaced[0].fit_error
    again = type(res).from_dict(res.to_dict())
    assert again.bn_images == 8 and again.replaced[0].ghost_error == res.replaced[0].ghost_error


@pytest.mark.parametrize("k", [1, 3], ids=["gram", "direct"])  # 320 positions: above / below q D
def test_output_moments_match_the_fitted_module(k):
    """track_bn's statistics (from the Gram moments, or the positions) = the module's own outputs' mean/var."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, k, padding=k // 2),
                        nn.BatchNorm2d(6))
    net.eval()
    x = torch.randn(5, 3, 8, 8)
    st = SequentialSettings(positions=10**6, holdout=0.0, track_bn=True)
    new, _ = ghostify(net, layers="2", init="fit", calibration_images=x, settings=st, reestimate_bn=False,
                      min_channels=0)
    with torch.no_grad():
        out = new[2](new[1](new[0](x))).double()
    torch.testing.assert_close(new[3].running_mean.double(), out.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(new[3].running_var.double(), out.var((0, 2, 3)), rtol=1e-4, atol=1e-5)


def test_direct_steps_match_the_gram_steps():
    """With few positions the refit works on them directly (dual form): the same ridge least squares."""
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 6, 3, padding=1, bias=True)
    x = torch.randn(2, 6, 4, 4)
    pos = torch.stack([sample_positions(4, 4, 5, 0, 0, i) for i in range(2)])
    with torch.no_grad():
        v = gather_patches(conv, x, pos, 3)
        y = torch.randn(v.shape[0], 6)
    mo = Moments(9, v.shape[2], 6)
    mo.add(v, y)
    rng = np.random.default_rng(0)
    start = dict(intrinsic=[0, 1, 2], ghosts=[3, 4, 5], source=[0, 1, 2])
    w0, k0 = torch.as_tensor(rng.normal(size=(3, v.shape[2]))), torch.as_tensor(rng.normal(size=(3, 9)))
    a = GhostFit(**start, weight=w0.clone(), kernel=k0.clone(), bias=torch.zeros(3, dtype=torch.float64))
    b = GhostFit(**start, weight=w0.clone(), kernel=k0.clone(), bias=torch.zeros(3, dtype=torch.float64))
    weights = torch.as_tensor(rng.uniform(0.5, 2, size=6))
    a.primary_step(mo, weights, 1e-2)
    b.primary_step_direct(v, y, weights, 1e-2)
    torch.testing.assert_close(b.weight, a.weight, rtol=1e-4, atol=1e-5)
    a.cheap_step(mo, 1e-2)
    b.cheap_step_direct(v, y, 1e-2)
    torch.testing.assert_close(b.kernel, a.kernel, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.bias, a.bias, rtol=1e-4, atol=1e-5)


def test_heldout_split_holds_out_whole_photos():
    photos = [f"p{i % 5}" for i in range(40)]  # 5 photos, 8 views each, dealt in turn as views are
    held, text = heldout_split(40, 0.125, 3, photos)
    held_photos = {p for p, h in zip(photos, held, strict=True) if h}
    fit_photos = {p for p, h in zip(photos, held, strict=True) if not h}
    assert held_photos and fit_photos and not held_photos & fit_photos  # no photo on both sides
    assert held.sum() >= 5 and "whole photos" in text and all(p in text for p in held_photos)
    assert np.array_equal(held, heldout_split(40, 0.125, 3, photos)[0])  # seeded
    assert len({tuple(heldout_split(40, 0.125, s, photos)[0]) for s in range(10)}) > 1
    most, _ = heldout_split(40, 0.95, 0, photos)
    assert len({p for p, h in zip(photos, most, strict=True) if not h}) == 1  # never every photo
    single, text = heldout_split(40, 0.125, 0)  # photos unknown: single images, the fraction asked for
    assert single.sum() == 5 and "single images" in text
    assert not heldout_split(40, 0.0, 0, photos)[0].any() and not heldout_split(1, 0.5, 0)[0].any()


def test_nothing_fitted_depends_on_the_held_out_photos():
    """Changing the held-out photos' images changes the reported errors and nothing else: the intrinsic choice
    and both refits see the fit photos only."""
    torch.manual_seed(0)
    net = TwoLayer().eval()
    x = torch.randn(12, 3, 10, 10, generator=torch.Generator().manual_seed(4))
    photos = [f"p{i % 4}" for i in range(12)]
    st = SequentialSettings(holdout=0.25, choice_images=12, iterations=1, refit_all=False)
    held = torch.as_tensor(heldout_split(12, st.holdout, st.seed, photos)[0])
    other = x.clone()
    other[held] = 3 * torch.randn(int(held.sum()), 3, 10, 10, generator=torch.Generator().manual_seed(5))
    runs = []
    for images in (x, other):
        new = copy.deepcopy(net)
        reports, _ = sequential_fit(net, new, ["a", "b"], images, {"a": 2, "b": 2}, 3, st, photos)
        runs.append((new, reports))
    (first, rep1), (second, rep2) = runs
    for name in ("a", "b"):
        assert rep1[name].intrinsic == rep2[name].intrinsic
        assert rep1[name].n_heldout == int(held.sum()) == 3
        for p, q in zip(getattr(first, name).parameters(), getattr(second, name).parameters(), strict=True):
            assert torch.equal(p, q)
    assert rep1["b"].heldout_error != rep2["b"].heldout_error  # what is reported is measured on them


def test_refit_all_keeps_the_errors_and_fits_the_kept_module_on_every_image():
    """``refit_all`` (the default) reports the errors of the fit without the held-out photos, then keeps a
    module fitted on every image: it makes the held-out images' outputs better than the module that never saw
    them does."""
    torch.manual_seed(0)
    net = TwoLayer().eval()
    x = torch.randn(12, 3, 10, 10, generator=torch.Generator().manual_seed(4))
    photos = [f"p{i % 4}" for i in range(12)]
    held = torch.as_tensor(heldout_split(12, 0.25, 0, photos)[0])
    out = {}
    for refit_all in (False, True):
        new = copy.deepcopy(net)
        st = SequentialSettings(holdout=0.25, iterations=2, refit_all=refit_all)
        out[refit_all] = (new, sequential_fit(net, new, ["a"], x, {"a": 2}, 3, st, photos)[0]["a"])
    (kept_out, only_fit), (kept_all, refit) = out[False], out[True]
    assert (refit.heldout_error, refit.ghost_error, refit.start_error, refit.intrinsic) == \
        (only_fit.heldout_error, only_fit.ghost_error, only_fit.start_error, only_fit.intrinsic)
    with torch.no_grad():
        inp = torch.relu(net.stem(x[held]))
        target = net.a(inp)
        err_out = float((kept_out.a(inp) - target).square().sum())
        err_all = float((kept_all.a(inp) - target).square().sum())
    assert err_all < err_out


def test_ghostify_of_sample_views_holds_out_whole_photos():
    from analysis import load_images
    from analysis.data.models import default_preprocess

    net = _bn_net()
    views = load_images("samples:chelsea,coffee,rocket,camera", default_preprocess(8, 6), views=16, seed=0)
    _, res = ghostify(net, layers="3", init="fit", calibration_images=views, min_channels=0)
    assert res.heldout is not None and res.heldout.startswith("whole photos held out: ")
    assert "4 of 16 images, 1 of 4 photos" in res.heldout and res.replaced[0].fit_error is not None
    assert type(res).from_dict(res.to_dict()).heldout == res.heldout and res.heldout in str(res)
