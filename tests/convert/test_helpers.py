"""Direct tests of the convert helpers the pipeline tests reach only through ghostify/verify:
execution_order, choose_layers, refit_dense, compare_outputs, channel_weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from analysis._core.errors import GhostmapsError
from analysis.convert import GhostifyError
from analysis.convert.bn import execution_order
from analysis.convert.choose import choose_layers
from analysis.convert.consumer import DenseMoments, refit_dense
from analysis.convert.evaluate import compare_outputs
from analysis.data.labelled import LabelError, evaluation_set
from analysis.reconstruct import channel_weights


class Shuffled(nn.Module):
    """Modules declared in one order, called in another, one of them twice."""

    def __init__(self) -> None:
        super().__init__()
        self.late = nn.Conv2d(4, 4, 1)
        self.early = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.late(self.act(self.early(x))))


def test_execution_order_is_the_first_call_order():
    net = Shuffled().train()
    assert execution_order(net, torch.randn(1, 3, 5, 5)) == ["early", "act", "late"]
    assert net.training  # the mode it was in is restored
    seq = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Sequential(nn.ReLU(), nn.Conv2d(3, 2, 1)))
    assert execution_order(seq, torch.randn(1, 3, 4, 4)) == ["0", "1", "1.0", "1.1"]


def _convs() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 32, 3), nn.Conv2d(32, 32, 3, groups=32), nn.Conv2d(32, 8, 1),
                         nn.Conv2d(8, 64, 1), nn.ReLU())


def test_choose_layers_default_skips_the_stem_grouped_and_small_convs():
    chosen, skipped = choose_layers(_convs(), None, ratio=2, min_channels=16)
    assert chosen == ["3"]
    why = {s.name: s.reason for s in skipped}
    assert set(why) == {"0", "1", "2"}
    assert "stem" in why["0"] and "group" in why["1"] and "8 output channels" in why["2"]


def test_choose_layers_by_name_and_glob():
    net = _convs()
    assert choose_layers(net, "2", ratio=2, min_channels=16)[0] == ["2"]  # named: min_channels does not apply
    chosen, skipped = choose_layers(net, ["[0-3]", "3"], ratio=2, min_channels=16)
    assert chosen == ["0", "2", "3"] and [s.name for s in skipped] == ["1"]  # a glob skips, never repeats


@pytest.mark.parametrize("layers,words", [("33", "unknown layer '33'. Did you mean: 3"), ("4", "ReLU, not a Conv2d"),
                                          ("1", "cannot be ghostified"), ("9*", "matches no module"),
                                          ([], "layers is empty"), ([3], "names or globs")])
def test_choose_layers_bad_input(layers, words):
    with pytest.raises(GhostifyError, match=words):
        choose_layers(_convs(), layers, ratio=2, min_channels=16)


def test_choose_layers_needs_a_conv():
    with pytest.raises(GhostifyError, match="no nn.Conv2d"):
        choose_layers(nn.Sequential(nn.Linear(2, 2)), None, ratio=2, min_channels=0)


def _dense_data(seed: int = 0, n: int = 200, dim: int = 6, c: int = 3, constant: int | None = None):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, dim)) + 3.0  # far from 0: the intercept matters
    if constant is not None:
        v[:, constant] = 2.0  # centred, a zero column: the solution depends on the start at ridge 0
    y = v @ rng.normal(size=(dim, c)) + 1.5 + 0.1 * rng.normal(size=(n, c))
    return v, y


@pytest.mark.parametrize("ridge", [0.0, 0.2])
@pytest.mark.parametrize("anchored", [False, True], ids=["to-zero", "to-start"])
def test_refit_dense_is_the_least_squares_with_a_free_intercept(ridge, anchored):
    v, y = _dense_data(constant=4)
    mo = DenseMoments(v.shape[1], y.shape[1])
    for part in np.array_split(np.arange(len(v)), 3):  # streamed in batches
        mo.add(torch.as_tensor(v[part]), torch.as_tensor(y[part]))
    start = np.random.default_rng(9).normal(size=(y.shape[1], v.shape[1])) if anchored else None
    w, c = refit_dense(mo, ridge, None if start is None else torch.as_tensor(start))
    vc, yc = v - v.mean(0), y - y.mean(0)  # the intercept is not penalised: centre, then ridge
    lam = ridge * float((vc * vc).sum()) / v.shape[1]
    aug = np.vstack([vc, np.sqrt(lam) * np.eye(v.shape[1])])
    prior = np.zeros((v.shape[1], y.shape[1])) if start is None else start.T
    if ridge == 0:  # lstsq's minimum-norm answer, shifted to the one nearest the start
        want = prior + np.linalg.lstsq(vc, yc - vc @ prior, rcond=None)[0]
    else:
        want = np.linalg.lstsq(aug, np.vstack([yc, np.sqrt(lam) * prior]), rcond=None)[0]
    if anchored:
        np.testing.assert_allclose(w[:, 4].numpy(), start[:, 4], rtol=1e-8, atol=1e-10)  # the constant input
    np.testing.assert_allclose(w.numpy(), want.T, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(c.numpy(), y.mean(0) - v.mean(0) @ want, rtol=1e-8, atol=1e-10)


def test_refit_dense_without_intercept_and_with_a_dead_input():
    v, y = _dense_data(1)
    v[:, 2] = 0.0
    mo = DenseMoments(v.shape[1], y.shape[1], centre=False)
    mo.add(torch.as_tensor(v), torch.as_tensor(y))
    w, c = refit_dense(mo, 0.0)
    assert c is None
    np.testing.assert_allclose(w.numpy(), np.linalg.lstsq(v, y, rcond=None)[0].T, rtol=1e-8, atol=1e-10)
    assert float(w[:, 2].abs().max()) < 1e-12  # minimum norm: the dead channel gets no weight
    start = torch.full_like(w, 0.5)
    w_start, _ = refit_dense(mo, 0.0, start)  # nearest the start: the dead channel keeps its start weight
    torch.testing.assert_close(w_start[:, 2], start[:, 2])
    torch.testing.assert_close(w_start[:, [0, 1, 3, 4, 5]], w[:, [0, 1, 3, 4, 5]])
    with pytest.raises(ValueError, match="at least one"):
        refit_dense(DenseMoments(2, 1), 0.0)


class Fixed(nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x[:, 0, 0, 0].long()]


def test_compare_outputs_per_image_against_numpy():
    rng = np.random.default_rng(0)
    lo, lr = rng.normal(size=(7, 10)), rng.normal(size=(7, 10))
    lr[:3] = lo[:3] + 0.01  # three images agree
    labels = torch.as_tensor(rng.integers(0, 10, size=7))
    x = torch.arange(7, dtype=torch.float32)[:, None, None, None].expand(7, 1, 2, 2).contiguous()
    ev = evaluation_set(x, labels=labels)
    out = compare_outputs(Fixed(torch.as_tensor(lo)), Fixed(torch.as_tensor(lr)), ev, torch.device("cpu"),
                          torch.float32, batch_size=3)
    assert out.n == 7 and out.num_classes == 10
    np.testing.assert_array_equal(out.agree1, lo.argmax(1) == lr.argmax(1))
    top5 = np.argsort(-lr, 1)[:, :5]
    np.testing.assert_array_equal(out.agree5, [lo[i].argmax() in top5[i] for i in range(7)])
    cos = (lo * lr).sum(1) / np.linalg.norm(lo, axis=1) / np.linalg.norm(lr, axis=1)
    np.testing.assert_allclose(out.cosine, cos, rtol=1e-10)
    p, q = np.exp(lo) / np.exp(lo).sum(1, keepdims=True), np.exp(lr) / np.exp(lr).sum(1, keepdims=True)
    np.testing.assert_allclose(out.kl, (p * np.log(p / q)).sum(1), rtol=1e-8, atol=1e-12)
    np.testing.assert_array_equal(out.correct1[0], lo.argmax(1) == labels.numpy())
    np.testing.assert_array_equal(out.correct1[1], lr.argmax(1) == labels.numpy())


def test_compare_outputs_bad_models_and_labels():
    x = torch.zeros(2, 1, 2, 2)
    cpu, f32 = torch.device("cpu"), torch.float32
    good = Fixed(torch.zeros(1, 4))
    with pytest.raises(GhostmapsError, match="differ in shape"):
        compare_outputs(good, Fixed(torch.zeros(1, 5)), evaluation_set(x), cpu, f32)
    with pytest.raises(GhostmapsError, match="N x classes logits"):
        compare_outputs(good, nn.Identity(), evaluation_set(x), cpu, f32)
    with pytest.raises(LabelError, match="outside the model's 4 classes"):
        compare_outputs(good, good, evaluation_set(x, labels=torch.tensor([1, 7])), cpu, f32)


def test_channel_weights_every_input_form():
    bn = nn.BatchNorm2d(3, eps=1e-3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.running_var.copy_(torch.tensor([4.0, 1.0, 0.25]))
    want = np.array([1.0, 4.0, 0.25]) / (np.array([4.0, 1.0, 0.25]) + 1e-3)
    np.testing.assert_allclose(channel_weights(bn, 3), want, rtol=1e-6)
    d = {"weight": bn.weight.detach(), "running_var": bn.running_var, "eps": 1e-3}
    np.testing.assert_allclose(channel_weights(d, 3), want, rtol=1e-6)
    np.testing.assert_allclose(channel_weights((d["weight"], d["running_var"], 1e-3), 3), want, rtol=1e-6)
    np.testing.assert_allclose(channel_weights(want, 3), want)
    assert channel_weights(None, 3) is None
    np.testing.assert_allclose(channel_weights({"running_var": [1.0, 3.0]}, 2), 1 / (np.array([1.0, 3.0]) + 1e-5))


@pytest.mark.parametrize("bn,words", [(nn.BatchNorm2d(3, track_running_stats=False), "no running statistics"),
                                      ({"weight": [1.0]}, "needs 'running_var'"),
                                      (nn.BatchNorm2d(4), "has 4 channels but the maps have 3"),
                                      (np.array([1.0, -1.0, 1.0]), "finite and >= 0")])
def test_channel_weights_bad_input(bn, words):
    with pytest.raises(GhostmapsError, match=words):
        channel_weights(bn, 3)
