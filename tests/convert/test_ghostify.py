"""analysis.convert.ghostify and ghostnet.layers.GhostConv, checked against the original convs and hand counts."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torchvision
from torch import nn

from analysis.convert import GhostifyError, ghostify, rebuild
from ghostnet.layers import GhostConv, ghost_conv_like
from ghostnet.validation import GhostConfigError


class PlainNet(nn.Module):
    """Stem + two dense convs (one with bias and dilation), a depthwise and a grouped conv, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv_a = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(32)
        self.conv_b = nn.Conv2d(32, 30, 3, padding=2, dilation=2, bias=True)  # 30: not a multiple of ratio 4
        self.dw = nn.Conv2d(30, 30, 3, padding=1, groups=30)
        self.grouped = nn.Conv2d(30, 30, 1, groups=3)
        self.small = nn.Conv2d(30, 4, 1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.bn_a(self.conv_a(x)))
        x = torch.relu(self.conv_b(x))
        x = self.small(self.grouped(self.dw(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def net() -> PlainNet:
    torch.manual_seed(0)
    return PlainNet().eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_default_choice_skips_stem_depthwise_grouped_small(net):
    new, res = ghostify(net)
    assert res.names == ["conv_a", "conv_b"]
    reasons = {s.name: s.reason for s in res.skipped}
    assert set(reasons) == {"stem", "dw", "grouped", "small"}
    assert "stem" in reasons["stem"] and "depthwise" in reasons["dw"] and "grouped" in reasons["grouped"]
    assert "4 output channels" in reasons["small"]
    assert isinstance(new.conv_a, GhostConv) and isinstance(net.conv_a, nn.Conv2d)


def test_fit_reproduces_intrinsic_channels_exactly(net, images):
    before = _state(net)
    new, res = ghostify(net, layers=["conv_b"], ratio=4, init="fit", calibration_images=images, mode="independent")
    for k, v in net.state_dict().items():  # the user's model is untouched
        assert torch.equal(v, before[k])
    entry = res.replaced[0]
    ghost, conv = new.conv_b, net.conv_b
    assert ghost.init_channels == math.ceil(30 / 4) == len(entry.intrinsic)
    x = torch.randn(2, 32, 9, 9)  # any input, not only the calibration images
    with torch.no_grad():
        want, got = conv(x), ghost(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got[:, entry.intrinsic], want[:, entry.intrinsic], rtol=0, atol=1e-5)
    assert 0 <= entry.fit_error < 1


def test_fitted_ghost_channels_match_ghostability_prediction(net, images):
    """The GhostConv's ghost outputs are the closed-form prediction Ghostability.predict makes (float32 vs 64)."""
    from analysis.hooks import capture_maps
    from analysis.reconstruct import ghostability

    new, res = ghostify(net, layers="conv_a", ratio=2, dw_size=3, init="fit", calibration_images=images,
                        mode="independent")
    maps = capture_maps(net, "conv_a", images)["conv_a"]
    g = ghostability(maps, ratio=2, d=3, split=None)  # ghostify fits on all calibration images
    maps_ghost = capture_maps(new, "conv_a", images)["conv_a"]
    torch.testing.assert_close(maps_ghost.double(), g.predict(maps), rtol=1e-4, atol=1e-4)
    ghosts = g.ghosts  # the fit error is the ghost channels' error (the exact intrinsic ones do not dilute it)
    a, b = maps_ghost.double()[:, ghosts], maps.double()[:, ghosts]
    err = float(((a - b) ** 2).sum() / ((b - b.mean((0, 2, 3), keepdim=True)) ** 2).sum())
    assert err == pytest.approx(res.replaced[0].fit_error, rel=1e-3)


def test_planted_ghosts_are_recovered(images):
    """A conv whose odd filters are exact d x d depthwise ghosts of its even ones is replaced losslessly."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 1))
    conv = net[2]
    with torch.no_grad():  # channel 2k+1 = 0.5 * channel 2k + 0.3 (a 1x1 cheap op with bias)
        conv.weight[1::2] = 0.5 * conv.weight[0::2]
        conv.bias[1::2] = 0.5 * conv.bias[0::2] + 0.3
    new, res = ghostify(net, layers="2", ratio=2, dw_size=1, init="fit", calibration_images=images, mode="independent")
    assert res.replaced[0].fit_error < 1e-6
    x = torch.randn(3, 3, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(new(x), net(x), rtol=1e-4, atol=1e-4)


def test_output_shape_and_state_dict_round_trip(net, images):
    new, res = ghostify(net, layers="conv_b", ratio=4, init="fit", calibration_images=images)
    with torch.no_grad():
        assert new(images).shape == net(images).shape
    buf = io.BytesIO()
    torch.save(new.state_dict(), buf)
    buf.seek(0)
    again = rebuild(PlainNet(), res.spec())
    again.load_state_dict(torch.load(buf, weights_only=True))
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(images), new(images), rtol=0, atol=0)
    assert isinstance(again.conv_b.order, torch.Tensor)


@pytest.mark.parametrize("ratio,d,c_in,c_out,k", [(2, 3, 64, 64, 3), (3, 3, 32, 96, 3), (4, 5, 48, 64, 1)])
def test_params_and_macs_drop_as_ratio_predicts(ratio, d, c_in, c_out, k):
    """Paper Eq. 4-5: r = c k^2 s / (c k^2 + (s-1) d^2) ~ s c / (s + c - 1) when d = k; biases aside."""
    from analysis.convert.macs import count_macs

    conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False)
    ghost = ghost_conv_like(conv, ratio=ratio, dw_size=d)
    m = c_out // ratio
    hand = c_in * k * k * m + (c_out - m) * (d * d + 1)  # primary weights + cheap weights and biases
    assert sum(p.numel() for p in ghost.parameters()) == hand
    x = torch.randn(1, c_in, 16, 16)
    macs_conv, macs_ghost = count_macs(conv, x).total_macs, count_macs(ghost, x).total_macs
    assert macs_conv == c_in * k * k * c_out * 16 * 16
    assert macs_ghost == (c_in * k * k * m + (c_out - m) * d * d) * 16 * 16
    r = macs_conv / macs_ghost
    predicted = c_in * k * k * ratio / (c_in * k * k + (ratio - 1) * d * d)
    assert r == pytest.approx(predicted, rel=1e-9)
    if d == k:
        assert r == pytest.approx(ratio * c_in / (ratio + c_in - 1), rel=0.02)


def test_uneven_channels_use_gather_and_no_unused_params(net):
    new, _ = ghostify(net, layers="conv_b", ratio=4)
    g = new.conv_b  # 30 outputs, 8 intrinsic, 22 ghosts: the last intrinsic map feeds only 1 ghost
    assert g.init_channels == 8 and g.ghost_channels == 22 and g.cheap.weight.shape == (22, 1, 3, 3)
    assert g.cheap_index.tolist() == [k // 3 for k in range(22)]
    x = torch.randn(2, 32, 8, 8)
    g(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in g.parameters())


def test_random_init_keeps_module_order(net):
    new, res = ghostify(net, layers="conv_a")
    assert new.conv_a.order is None and res.replaced[0].intrinsic is None and res.replaced[0].fit_error is None


def test_calibration_does_not_increase_error(net, images):
    _, res0 = ghostify(net, layers="conv_a", init="fit", calibration_images=images, mode="independent")
    _, res = ghostify(net, layers="conv_a", init="fit", calibration_images=images, calibrate_steps=30,
                      calibrate_lr=1e-3, mode="independent")
    e = res.replaced[0]
    assert e.fit_error == pytest.approx(res0.replaced[0].fit_error)
    assert e.calibrated_error is not None and e.calibrated_error <= e.fit_error * 1.001


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
def test_calibration_runs_inside_no_grad_and_inference_mode(net, images, context):
    kwargs = {"layers": "conv_a", "init": "fit", "calibration_images": images, "calibrate_steps": 5,
              "mode": "independent"}
    want_model, want = ghostify(net, **kwargs)
    with context():
        got_model, got = ghostify(net, **kwargs)
    assert got.replaced[0].calibrated_error == pytest.approx(want.replaced[0].calibrated_error, rel=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(got_model(images), want_model(images), rtol=1e-5, atol=1e-6)


def test_fit_and_calibration_follow_a_bfloat16_model(net, images):
    _, ref = ghostify(net, layers="conv_a", init="fit", calibration_images=images, mode="independent")
    half = copy.deepcopy(net).to(torch.bfloat16)
    for steps in (0, 2):
        new, res = ghostify(half, layers="conv_a", init="fit", calibration_images=images, calibrate_steps=steps,
                            mode="independent")
        assert new.conv_a.primary.weight.dtype == torch.bfloat16
        assert res.replaced[0].fit_error == pytest.approx(ref.replaced[0].fit_error, abs=0.02)
        assert (res.replaced[0].calibrated_error is not None) == (steps > 0)
        with torch.no_grad():
            got = new.conv_a(half.stem(images.to(torch.bfloat16)).relu()).float()
            want = net.conv_a(net.stem(images).relu())
        idx = res.replaced[0].intrinsic  # intrinsic channels are the original filters, up to bf16 rounding
        torch.testing.assert_close(got[:, idx], want[:, idx], rtol=0.05, atol=0.05)


def test_glob_skips_depthwise_with_reason(net):
    _, res = ghostify(net, layers=["conv_*", "dw*"])
    assert res.names == ["conv_a", "conv_b"]
    assert [s.name for s in res.skipped] == ["dw"]


@pytest.mark.parametrize("kwargs,words", [
    ({"layers": "bn_a"}, ["bn_a", "BatchNorm2d", "not a Conv2d"]),
    ({"layers": "conv_c"}, ["conv_c", "Did you mean", "conv_a", "ghostmaps layers MODEL --grep Conv2d"]),
    ({"layers": "dw"}, ["dw", "depthwise"]),
    ({"layers": "conv_a", "ratio": 1}, ["ratio", ">= 2"]),
    ({"layers": "conv_a", "dw_size": 4}, ["dw_size", "odd"]),
    ({"layers": "conv_a", "init": "fit"}, ["calibration_images", "init='fit'"]),
    ({"layers": "conv_a", "init": "pretrained"}, ["init", "'fit'"]),
    ({"layers": "conv_a", "calibrate_steps": 5}, ["calibrate_steps", "init='fit'"]),
    ({"layers": "conv_a", "init": "fit", "calibration_images": "samples", "calibrate_steps": 5},
     ["calibrate_steps", "mode='independent'"]),
    ({"layers": "conv_a", "init": "fit", "calibration_images": "samples", "mode": "joint"}, ["mode", "sequential"]),
    ({"layers": "nothing*"}, ["nothing*", "matches no module"]),
])
def test_bad_input_names_the_problem(net, kwargs, words):
    with pytest.raises(GhostifyError) as info:
        ghostify(net, **kwargs)
    assert isinstance(info.value, ValueError)
    for w in words:
        assert w in str(info.value)


def test_ghost_conv_order_must_be_permutation():
    with pytest.raises(GhostConfigError, match="permutation"):
        GhostConv(4, 6, order=[0, 1, 2, 3, 4, 4])


@pytest.mark.parametrize("name,layer", [("resnet18", "layer1.0.conv1"), ("vgg16", "features.2"),
                                        ("resnet50", "layer1.0.conv2"), ("mobilenet_v2", "features.2.conv.0.0")])
def test_torchvision_models(name, layer):
    """Random-weight torchvision models: fit one conv, output shape kept, intrinsic channels exact."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(2, 3, 32, 32)
    new, res = ghostify(model, layers=layer, init="fit", calibration_images=x, mode="independent")
    assert res.names == [layer]
    with torch.no_grad():
        assert new(x).shape == model(x).shape
    from analysis.hooks import capture_maps

    want = capture_maps(model, layer, x)[layer]
    got = capture_maps(new, layer, x)[layer]
    idx = res.replaced[0].intrinsic
    torch.testing.assert_close(got[:, idx], want[:, idx], rtol=0, atol=1e-4)


def test_default_choice_on_resnet18_is_every_dense_conv_but_stem():
    model = torchvision.models.resnet18(weights=None)
    snapshot = copy.deepcopy(model.state_dict())
    new, res = ghostify(model)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert res.names == convs[1:] and [s.name for s in res.skipped] == ["conv1"]
    assert all(torch.equal(v, snapshot[k]) for k, v in model.state_dict().items())
    assert sum(isinstance(m, GhostConv) for m in new.modules()) == len(convs) - 1
    d = res.to_dict()
    assert d["replaced"][0]["name"] == convs[1] and d["skipped"][0]["reason"]
    assert list(res.to_frame()["status"]).count("replaced") == len(convs) - 1
    assert '"replaced"' in res.to_json() and "replaced" in str(res)


def test_ghostify_fit_never_makes_ghostnet_import_analysis():
    """The ghostnet -> analysis rule at run time, on the path that fits cheap ops (init="fit"): every import made
    by a ghostnet module, through ``import`` or ``importlib``, is recorded; none may reach analysis."""
    import subprocess
    import sys

    code = """
import builtins, importlib, sys
seen = []
real_import, real_import_module = builtins.__import__, importlib.import_module
def _importer(frame_globals):
    return (frame_globals or {}).get("__name__", "")
def guard(name, globals=None, locals=None, fromlist=(), level=0):
    if _importer(globals).split(".")[0] == "ghostnet" and level == 0 and name.split(".")[0] == "analysis":
        seen.append((_importer(globals), name))
    return real_import(name, globals, locals, fromlist, level)
def guard_module(name, package=None):
    caller = sys._getframe(1).f_globals.get("__name__", "")
    if caller.split(".")[0] == "ghostnet" and name.split(".")[0] == "analysis":
        seen.append((caller, name))
    return real_import_module(name, package)
builtins.__import__, importlib.import_module = guard, guard_module
import torch
from torch import nn
from analysis.convert import ghostify
torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3))
new, res = ghostify(net, layers=["0", "2"], init="fit", calibration_images=torch.randn(4, 3, 12, 12))
assert len(res.replaced) == 2, res
assert any(m.startswith("analysis.reconstruct") for m in sys.modules)  # the fit really ran the solver
print(seen)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_ratio_per_layer(images):
    from tests.helpers import PlanNet

    model = PlanNet()
    new, res = ghostify(model, ratio={"convs.1": 2, "convs.3": 4}, init="fit", calibration_images=images)
    assert [(r.name, r.ratio, r.init_channels) for r in res.replaced] == [("convs.1", 2, 16), ("convs.3", 4, 12)]
    assert isinstance(new.convs[1], GhostConv) and isinstance(new.convs[3], GhostConv)
    assert not isinstance(new.convs[2], GhostConv)
    with pytest.raises(GhostifyError, match=r"ratio\['convs.1'\]"):
        ghostify(model, ratio={"convs.1": 1})
    with pytest.raises(GhostifyError, match="empty mapping"):
        ghostify(model, ratio={})
