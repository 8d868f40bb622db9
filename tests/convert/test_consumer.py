"""The consumer refit (analysis.convert.consumer, ``ghostify(consumer_refit=True)``): the refitted dense conv
checked against brute-force least squares (numpy lstsq on an explicitly unfolded design) on the converted
network's inputs and the original network's outputs; off by default and changing nothing when off; the
consumers found by perturbation on mobilenet_v2's structure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenet_v2

from analysis.convert import GhostifyError, ghostify
from analysis.convert.consumer import find_consumers, refit_consumer
from analysis.convert.sequential import SequentialSettings, _validation_split, heldout_split

ALL = SequentialSettings(positions=10**6, holdout=0.0, iterations=1, ridge=0.0)


def _net(consumer_bias: bool, kernel: int = 1) -> nn.Sequential:
    """conv -> BN -> ReLU -> depthwise -> BN -> ReLU6 -> dense consumer (-> BN when bias-free) -> head."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                               nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                               nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16),
                               nn.ReLU6(), nn.Conv2d(16, 12, kernel, padding=kernel // 2, bias=consumer_bias)]
    if not consumer_bias:
        layers.append(nn.BatchNorm2d(12))
    layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5)]
    net = nn.Sequential(*layers)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return net.eval()


def _io(net: nn.Module, module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    got: dict[str, torch.Tensor] = {}

    def hook(_m, inp, out):
        got["x"], got["y"] = inp[0].detach(), out.detach()
    h = module.register_forward_hook(hook)
    with torch.no_grad():
        net(x)
    h.remove()
    return got["x"], got["y"]


def _brute(conv: nn.Conv2d, x: torch.Tensor, y: torch.Tensor, ridge: float,
           w0: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """min |y - W P - c|^2 + lam |W - W0|^2 over the unfolded patches (lam relative to the centred design's
    trace; W0 = 0 unless given)."""
    cols = F.unfold(x.double(), conv.kernel_size, padding=conv.padding, stride=conv.stride)  # N x D x L
    p = cols.transpose(1, 2).reshape(-1, cols.shape[1]).numpy()
    t = y.double().permute(0, 2, 3, 1).reshape(-1, y.shape[1]).numpy()
    pc, tc = p - p.mean(0), t - t.mean(0)
    lam = ridge * float((pc * pc).sum()) / p.shape[1]
    a = np.vstack([pc, np.sqrt(lam) * np.eye(p.shape[1])])
    b = np.vstack([tc, np.sqrt(lam) * (np.zeros((p.shape[1], t.shape[1])) if w0 is None else w0.T)])
    w = np.linalg.lstsq(a, b, rcond=None)[0].T
    return w, t.mean(0) - w @ p.mean(0)


@pytest.mark.parametrize("bias,kernel,ridge,prior", [(False, 1, 0.0, "zero"), (True, 3, 0.0, "zero"),
                                                     (False, 1, 0.05, "zero"), (True, 3, 0.5, "start")])
def test_the_refit_is_the_least_squares_on_converted_inputs_against_original_outputs(bias, kernel, ridge, prior):
    net = _net(bias, kernel)
    x = torch.randn(12, 3, 10, 10)
    st = SequentialSettings(positions=10**6, holdout=0.0, iterations=1, ridge=ridge, prior=prior)
    new, res = ghostify(net, layers=["3"], init="fit", calibration_images=x, settings=st, consumer_refit=True)
    assert [(c.name, c.producers) for c in res.consumers] == [("9", ["3"])]
    assert res.consumers[0].n_fit == 12 * 100 and res.consumers[0].heldout_error_after is None  # nothing held out
    # brute force on the *converted* network's inputs (upstream of the consumer nothing changes after its refit)
    xin, _ = _io(new, new[9], x)
    _, yorig = _io(net, net[9], x)
    w0 = net[9].weight.detach().double().reshape(12, -1).numpy() if prior == "start" else None
    w, c = _brute(net[9], xin, yorig, ridge, w0)
    np.testing.assert_allclose(new[9].weight.detach().double().reshape(12, -1).numpy(), w, atol=1e-4, rtol=1e-4)
    if bias:
        np.testing.assert_allclose(new[9].bias.detach().double().numpy(), c, atol=1e-4)
    else:  # the intercept went into the BN's running mean: BN(z + c) = BN with running_mean - c
        shift = (net[10].running_mean - new[10].running_mean).double().numpy()
        np.testing.assert_allclose(shift, c, atol=1e-4)
        assert torch.equal(new[10].running_var, net[10].running_var)
    # and the consumer's output in the converted network is that least-squares prediction
    cols = F.unfold(xin.double(), net[9].kernel_size, padding=net[9].padding)
    pred = (torch.as_tensor(w) @ cols + torch.as_tensor(c)[:, None]).reshape(yorig.shape)
    _, ynew = _io(new, new[9], x)
    got = ynew.double() if bias else ynew.double() + torch.as_tensor(shift)[None, :, None, None]
    assert torch.allclose(got, pred, atol=1e-4)


def test_heldout_errors_are_reported_and_the_refit_lowers_them():
    net = _net(False)
    x = torch.randn(32, 3, 10, 10)
    _, res = ghostify(net, layers=["3"], init="fit", calibration_images=x, consumer_refit=True,
                      settings=SequentialSettings(holdout=0.25))
    (c,) = res.consumers
    assert c.n_heldout == 8 * 100 and c.n_fit == 24 * 100
    assert 0 < c.heldout_error_after < c.heldout_error_before
    assert "consumer 9 (of 3) refitted" in str(res)
    assert res.from_dict(res.to_dict()).consumers == res.consumers


def test_off_by_default_and_nothing_changes_when_off():
    net = _net(False)
    x = torch.randn(16, 3, 10, 10)
    default, r0 = ghostify(net, layers=["3"], init="fit", calibration_images=x, settings=ALL)
    off, r1 = ghostify(net, layers=["3"], init="fit", calibration_images=x, settings=ALL, consumer_refit=False)
    on, r2 = ghostify(net, layers=["3"], init="fit", calibration_images=x, settings=ALL, consumer_refit=True)
    assert r0.consumers == r1.consumers == [] and len(r2.consumers) == 1
    s0, s1, s2 = default.state_dict(), off.state_dict(), on.state_dict()
    assert all(torch.equal(s0[k], s1[k]) for k in s0)
    orig = net.state_dict()
    assert torch.equal(s0["9.weight"], orig["9.weight"]) and torch.equal(s0["10.running_mean"], orig["10.running_mean"])
    # with the refit on, the replaced conv itself is fitted exactly as without it; only the consumer changes
    assert all(torch.equal(s0[k], s2[k]) for k in s0 if k.startswith("3."))
    assert not torch.equal(s2["9.weight"], orig["9.weight"])


def test_consumers_on_mobilenet_v2():
    model = mobilenet_v2(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    f = "features.{}.conv.{}".format
    # an expansion's consumer is its block's projection (through BN, ReLU6, the depthwise conv, BN, ReLU6);
    # a projection's is the next block's expansion (through BN and, in a residual block, the add)
    assert find_consumers(model, [f(10, "0.0")], x) == {f(10, 2): [f(10, "0.0")]}
    assert find_consumers(model, [f(9, 2)], x) == {f(10, "0.0"): [f(9, 2)]}
    # a consumer that is replaced itself gets no refit: a contiguous run only refits the conv after it
    run = [f(b, c) for b in range(10, 15) for c in ("0.0", 2)]
    assert find_consumers(model, run, x) == {f(15, "0.0"): [f(14, 2)]}
    assert find_consumers(model, ["features.17.conv.2"], x) == {"features.18.0": ["features.17.conv.2"]}
    assert find_consumers(model, ["features.18.0"], x) == {}  # only the classifier's Linear follows


def test_bad_input_names_the_input():
    net = _net(False)
    x = torch.randn(4, 3, 10, 10)
    with pytest.raises(GhostifyError, match="consumer_refit=True needs init='fit' and mode='sequential'"):
        ghostify(net, layers=["3"], init="fit", calibration_images=x, mode="independent", consumer_refit=True)
    with pytest.raises(GhostifyError, match="consumer_refit=True needs"):
        ghostify(net, layers=["3"], init=None, settings=SequentialSettings(consumer_refit=True))
    with pytest.raises(GhostifyError, match="consumer_refit must be True or False"):
        ghostify(net, layers=["3"], init="fit", calibration_images=x, consumer_refit="yes")
    with pytest.raises(GhostifyError, match="settings.consumer_refit must be True or False"):
        SequentialSettings(consumer_refit=1)
    with pytest.raises(GhostifyError, match="settings must be a SequentialSettings"):
        ghostify(net, layers=["3"], init="fit", calibration_images=x, settings={"ridge": 1})


def test_an_overfitted_refit_is_not_applied():
    # a 3x3 consumer (144 inputs) fitted on 4 images of 4 x 4 (64 positions): the ridge-0 refit interpolates
    net = _net(False, kernel=3)
    x = torch.randn(8, 3, 4, 4)
    new, res = ghostify(net, layers=["3"], init="fit", calibration_images=x, consumer_refit=True,
                        settings=SequentialSettings(holdout=0.5, ridge=0.0))
    (c,) = res.consumers
    # 4 fit images (64 positions), 2 of them the validation split: the decision refit sees 32 positions
    assert c.n_fit == 64 and c.n_validation == 32 and not c.applied
    assert c.validation_error_after >= c.validation_error_before
    assert torch.equal(new[9].weight, net[9].weight) and torch.equal(new[10].running_mean, net[10].running_mean)
    assert "consumer 9 (of 3) kept (a refit did not lower its validation error" in str(res)


def _consumer_problem(seed: int = 0):
    """A 1x1 dense conv (6 -> 4, biased) on 10 images of 3 x 3: its inputs, 9 positions each, and targets
    from a different linear map plus noise (so the refit changes the weights)."""
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(6, 4, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        conv.bias.copy_(torch.randn(4, generator=g))
    x = torch.randn(10, 6, 3, 3, generator=g)
    true = torch.randn(4, 6, generator=g)
    y = torch.einsum("oc,bcp->bpo", true, x.reshape(10, 6, 9)) + 0.3 * torch.randn(10, 9, 4, generator=g)
    pos = torch.arange(9).expand(10, 9)
    held = torch.zeros(10, dtype=torch.bool)
    held[[1, 6]] = True
    decide = torch.zeros(10, dtype=torch.bool)
    decide[[3, 8]] = True
    return conv, [x[:4], x[4:]], pos, y, held, decide


def test_the_held_out_images_neither_fit_nor_choose_the_refit():
    conv, inputs, pos, y, held, decide = _consumer_problem()
    x = torch.cat(inputs)
    weights = torch.ones(4, dtype=torch.float64)
    old_w, old_b = conv.weight.detach().double().reshape(4, 6).numpy(), conv.bias.detach().double().numpy()
    c = refit_consumer("c", ["p"], conv, None, inputs, pos, y, held, weights, 0.0, decide)
    rows = lambda mask: (x[mask].permute(0, 2, 3, 1).reshape(-1, 6).double().numpy(),  # noqa: E731
                         y[mask].reshape(-1, 4).double().numpy())

    def lstsq(p, t):
        a = np.hstack([p, np.ones((p.shape[0], 1))])
        sol = np.linalg.lstsq(a, t, rcond=None)[0]
        return sol[:-1].T, sol[-1]

    def err(w, b, p, t):
        return float(((p @ w.T + b - t) ** 2).sum() / ((t - t.mean(0)) ** 2).sum())

    # the decision: fitted on the fit images that are not the validation split, judged on the validation split
    w_in, b_in = lstsq(*rows(~held & ~decide))
    assert c.validation_error_before == pytest.approx(err(old_w, old_b, *rows(decide)), rel=1e-9)
    assert c.validation_error_after == pytest.approx(err(w_in, b_in, *rows(decide)), rel=1e-6)
    assert c.applied == (c.validation_error_after < c.validation_error_before) and c.applied
    # the weights kept: fitted on every fit image; reported on the held-out images
    w, b = lstsq(*rows(~held))
    np.testing.assert_allclose(conv.weight.detach().double().reshape(4, 6).numpy(), w, atol=1e-5)
    np.testing.assert_allclose(conv.bias.detach().double().numpy(), b, atol=1e-5)
    assert c.heldout_error_before == pytest.approx(err(old_w, old_b, *rows(held)), rel=1e-6)
    assert c.heldout_error_after == pytest.approx(err(w, b, *rows(held)), rel=1e-5)
    assert (c.n_fit, c.n_heldout, c.n_validation) == (8 * 9, 2 * 9, 2 * 9)
    # changing the held-out targets changes neither the weights kept nor the decision
    conv2, inputs2, pos2, y2, held2, decide2 = _consumer_problem()
    y2[held2] = 100.0 * torch.randn_like(y2[held2])
    c2 = refit_consumer("c", ["p"], conv2, None, inputs2, pos2, y2, held2, weights, 0.0, decide2)
    assert torch.equal(conv2.weight, conv.weight) and torch.equal(conv2.bias, conv.bias)
    assert (c2.applied, c2.validation_error_after) == (c.applied, c.validation_error_after)
    with pytest.raises(ValueError, match="decision images must not be held-out"):
        refit_consumer("c", ["p"], conv2, None, inputs2, pos2, y2, held2, weights, 0.0, held2)


def test_the_validation_split_takes_whole_fit_photos_only():
    photos = [p for p in "abcdef" for _ in range(4)]
    held, _ = heldout_split(24, 0.125, 0, photos)
    st = SequentialSettings(holdout=0.125)
    decide, how = _validation_split(held, st, photos)
    assert not (decide & held).any() and decide.any() and (~held & ~decide).any()
    inside = {photos[i] for i in np.flatnonzero(decide)}
    assert all(decide[i] == (photos[i] in inside) for i in range(24))  # whole photos
    assert how == f"of the 20 fit images, whole photos for the decision: {''.join(inside)} (4 of 20 images, 1 of 5 photos)"
    assert np.array_equal(decide, _validation_split(held, st, photos)[0])  # seeded
    off, how = _validation_split(held, SequentialSettings(holdout=0.0), photos)
    assert not off.any() and how.startswith("no validation images")
    # a photo list that does not match the images is not used (single images, not misaligned photos)
    assert "single images" in _validation_split(held, st, photos[:10])[1]


def test_the_held_out_error_cannot_veto_a_refit():
    # the held-out targets are the original weights' own output: a choice by held-out error would keep them
    conv, inputs, pos, y, held, decide = _consumer_problem()
    x = torch.cat(inputs)
    with torch.no_grad():
        y[held] = conv(x[held]).flatten(2).transpose(1, 2)
    c = refit_consumer("c", ["p"], conv, None, inputs, pos, y, held, torch.ones(4, dtype=torch.float64), 0.0, decide)
    assert c.heldout_error_after > c.heldout_error_before and c.applied


def test_without_validation_images_a_checked_refit_is_not_applied():
    conv, inputs, pos, y, held, _ = _consumer_problem()
    w0 = conv.weight.detach().clone()
    none = torch.zeros_like(held)
    c = refit_consumer("c", ["p"], conv, None, inputs, pos, y, held, torch.ones(4, dtype=torch.float64), 0.0, none,
                       validation="no validation images (2 fit images, holdout=0.5)")
    assert not c.applied and c.n_validation == 0 and torch.equal(conv.weight, w0)
    c = refit_consumer("c", ["p"], conv, None, inputs, pos, y, held, torch.ones(4, dtype=torch.float64), 0.0, none,
                       check=False)
    assert c.applied and not torch.equal(conv.weight, w0)  # holdout=0: the user turned the checks off
    # end to end: two images, one held out, one left to fit: nothing to validate on, so nothing is refitted
    net = _net(False)
    new, res = ghostify(net, layers=["3"], init="fit", calibration_images=torch.randn(2, 3, 10, 10),
                        consumer_refit=True, settings=SequentialSettings(holdout=0.5))
    (c,) = res.consumers
    assert not c.applied and torch.equal(new[9].weight, net[9].weight)
    assert "consumer 9 (of 3) kept, not refitted (no validation images (1 fit images" in str(res)


def test_records_from_before_the_validation_split_still_read_and_print():
    old = {"name": "9", "producers": ["3"], "heldout_error_before": 0.2, "heldout_error_after": 0.3, "n_fit": 10,
           "n_heldout": 5, "applied": False}
    from analysis.convert.ghostify_result import RefittedConsumer, _decision

    c = RefittedConsumer.from_dict(old)
    assert c.validation is None and c.n_validation == 0
    assert _decision(c) == "kept (the refit did not lower its held-out error)"


def test_in_the_whole_fit_the_held_out_images_change_nothing_of_the_consumer():
    # refit_all=False: the held-out images enter no Gram, no intrinsic choice and no decision, so other
    # held-out images give the same converted network and the same decision, only other held-out errors
    net = _net(False)
    x = torch.randn(24, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    st = SequentialSettings(holdout=0.25, refit_all=False)
    held, _ = heldout_split(24, st.holdout, st.seed)
    y = x.clone()
    y[torch.as_tensor(held)] = torch.randn(int(held.sum()), 3, 10, 10, generator=torch.Generator().manual_seed(2))
    a, ra = ghostify(net, layers=["3"], init="fit", calibration_images=x, consumer_refit=True, settings=st)
    b, rb = ghostify(net, layers=["3"], init="fit", calibration_images=y, consumer_refit=True, settings=st)
    (ca,), (cb,) = ra.consumers, rb.consumers
    assert ca.n_validation > 0 and (ca.applied, ca.validation_error_after) == (cb.applied, cb.validation_error_after)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert ca.heldout_error_before != cb.heldout_error_before


def test_a_validation_error_that_cannot_be_measured_does_not_pass_the_check():
    # one position per image and one validation image: no error to measure (fewer than two positions)
    conv, inputs, pos, y, held, _ = _consumer_problem()
    pos1, y1 = pos[:, :1], y[:, :1]
    one = torch.zeros_like(held)
    one[3] = True
    w0 = conv.weight.detach().clone()
    c = refit_consumer("c", ["p"], conv, None, inputs, pos1, y1, held, torch.ones(4, dtype=torch.float64), 0.0, one,
                       validation="of the 8 fit images, single images for the decision (1 of 8)")
    assert c.n_validation == 1 and c.validation_error_before is None and not c.applied
    assert torch.equal(conv.weight, w0)
    from analysis.convert.ghostify_result import _decision

    assert _decision(c) == "kept, not refitted (of the 8 fit images, single images for the decision (1 of 8))"
    # a record decided on a validation split but written without its description reads as such, not as old
    c.validation, c.validation_error_before, c.validation_error_after, c.applied = None, 0.3, 0.2, True
    assert _decision(c) == "refitted (validation error 0.3000 -> 0.2000)"


def test_fit_images_of_one_photo_say_the_decision_is_weak():
    photos = ["a"] * 8 + ["b"] * 8
    held = np.array([p == "b" for p in photos])
    decide, how = _validation_split(held, SequentialSettings(holdout=0.25), photos)
    assert decide.sum() == 2 and not (decide & held).any()
    assert how == ("of the 8 fit images, all views of a, 2 single views for the decision (judged on views of "
                   "the photo it was fitted on: a weak check)")
