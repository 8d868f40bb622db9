"""Capture: in-place safety, reused modules, hook cleanup, layer selection."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from analysis import GhostmapsError, UnknownLayerError, capture, capture_maps, eval_mode, list_layers
from analysis.hooks import resolve_layers


def hook_counts(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


@pytest.fixture(scope="module")
def resnet50():
    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None).eval()


def test_inplace_relu_does_not_overwrite_captured_bn1(resnet50):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), capture(resnet50, ["layer1.0.bn1", "layer1.0.bn3"]) as maps:
        resnet50(x)
    assert maps["layer1.0.bn1"].min() < 0  # a hook keeping a reference would see the ReLU's zeros
    assert maps["layer1.0.bn3"].min() < 0  # mutated later by `out += identity` and the ReLU
    # independent reference: recompute bn1's output by hand from conv1's output
    with torch.no_grad(), capture(resnet50, "layer1.0.conv1") as conv:
        resnet50(x)
    expected = resnet50.layer1[0].bn1(conv["layer1.0.conv1"])
    torch.testing.assert_close(maps["layer1.0.bn1"], expected)


def test_reused_relu_gives_one_entry_per_call(resnet50):
    with torch.no_grad(), capture(resnet50, "layer1.0.relu") as maps:
        resnet50(torch.randn(1, 3, 64, 64))
    assert list(maps) == ["layer1.0.relu", "layer1.0.relu#1", "layer1.0.relu#2"]
    assert [maps[k].shape[1] for k in maps] == [64, 64, 256]
    with torch.no_grad(), capture(resnet50, "layer1.0.relu#2") as only:
        resnet50(torch.randn(1, 3, 64, 64))
    assert list(only) == ["layer1.0.relu#2"]


def test_no_hooks_remain_even_when_forward_raises(tiny):
    before = hook_counts(tiny)
    with torch.no_grad(), capture(tiny, ["conv1", "relu", "fc"]):
        tiny(torch.randn(1, 3, 8, 8))
    assert hook_counts(tiny) == before
    with pytest.raises(RuntimeError), capture(tiny, "Conv2d"):
        tiny(torch.randn(1, 4, 8, 8))  # wrong channel count: conv1 raises
    assert hook_counts(tiny) == before
    keys = set(tiny.state_dict())
    list_layers(tiny, 16)
    assert set(tiny.state_dict()) == keys and hook_counts(tiny) == before


def test_unknown_layer_fails_before_running_with_close_matches(tiny):
    calls = []
    tiny.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(UnknownLayerError, match="conv2") as info:
        with capture(tiny, "conv3"):
            tiny(torch.randn(1, 3, 8, 8))
    assert "Did you mean" in str(info.value) and not calls
    with pytest.raises(UnknownLayerError, match="matches no module"):
        resolve_layers(tiny, "blocks.*")
    with pytest.raises(UnknownLayerError, match="Conv2d"):
        resolve_layers(tiny, nn.Conv3d)


def test_selection_by_glob_type_and_type_object(tiny):
    assert set(resolve_layers(tiny, "conv*")) == {"conv1", "conv2"}
    assert set(resolve_layers(tiny, "Conv2d")) == {"conv1", "conv2"}
    assert set(resolve_layers(tiny, nn.BatchNorm2d)) == {"bn1"}
    assert resolve_layers(tiny, ["relu#1", "relu#0"]) == {"relu": {0, 1}}


def test_captured_values_match_a_manual_forward(tiny):
    x = torch.randn(2, 3, 8, 8)
    maps = capture_maps(tiny, ["conv1", "relu", "fc"], x)
    with torch.no_grad():
        a = tiny.conv1(x)
        r0 = torch.relu(tiny.bn1(a))
        r1 = torch.relu(tiny.conv2(r0))
        out = tiny.fc(r1.mean((2, 3)))
    torch.testing.assert_close(maps["conv1"], a)
    torch.testing.assert_close(maps["relu"], r0)
    torch.testing.assert_close(maps["relu#1"], r1)
    torch.testing.assert_close(maps["fc"], out)
    assert not any(t.is_inference() for t in maps.values())  # plain tensors: a caller may edit them
    maps["conv1"].mul_(2)
    (maps["fc"].requires_grad_() ** 2).sum().backward()


def test_tuple_outputs_callback_and_store():
    class Split(nn.Module):
        def forward(self, x):
            return x[:, :2], {"rest": x[:, 2:]}

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.split = Split()

        def forward(self, x):
            a, b = self.split(x)
            return a.sum() + b["rest"].sum()

    model = Wrap()
    seen = []
    with capture(model, "split", store=False, callback=lambda n, t: seen.append((n, t.shape[1]))) as maps:
        model(torch.zeros(1, 5, 2, 2))
    assert seen == [("split[0]", 2), ("split[1][rest]", 3)] and not maps
    with capture(model, "split") as maps:
        model(torch.zeros(1, 5, 2, 2))
    assert set(maps) == {"split[0]", "split[1][rest]"}


def test_list_layers_names_types_shapes_and_restores_train_mode(tiny):
    tiny.train()
    layers = list_layers(tiny, 16)
    assert tiny.training and tiny.bn1.training
    assert [(info.name, info.type, info.shape) for info in layers] == [
        ("conv1", "Conv2d", (1, 8, 16, 16)),
        ("bn1", "BatchNorm2d", (1, 8, 16, 16)),
        ("relu", "ReLU", (1, 8, 16, 16)),
        ("conv2", "Conv2d", (1, 16, 8, 8)),
        ("relu#1", "ReLU", (1, 16, 8, 8)),
        ("pool", "AdaptiveAvgPool2d", (1, 16, 1, 1)),
        ("fc", "Linear", (1, 5)),
    ]
    assert layers[0].channels == 8 and layers[-1].channels is None
    assert layers[0].to_dict()["name"] == "conv1"
    assert torch.equal(tiny.bn1.running_mean, torch.zeros(8))  # the dry run did not touch BN statistics


def test_eval_mode_restores_flags(tiny):
    tiny.train()
    tiny.bn1.eval()
    with eval_mode(tiny):
        assert not any(m.training for m in tiny.modules())
    assert tiny.training and not tiny.bn1.training and tiny.conv1.training


def test_list_layers_and_capture_maps_follow_the_model_dtype(tiny):
    half = tiny.to(torch.bfloat16)
    layers = list_layers(half, 16)
    assert layers[0].shape == (1, 8, 16, 16)
    maps = capture_maps(half, "conv2", torch.randn(1, 3, 16, 16))
    assert maps["conv2"].dtype == torch.bfloat16


def test_a_call_that_never_happens_is_reported(tiny):
    with pytest.warns(UserWarning, match=r"relu#5 \(it ran 2 time"):
        with torch.no_grad(), capture(tiny, "relu#5") as maps:
            tiny(torch.randn(1, 3, 8, 8))
    assert not maps


class _Reuse(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.bn = nn.BatchNorm2d(2)
        self.pair = nn.Identity()

    def forward(self, x):
        x = self.bn(self.conv(self.conv(x)))
        return self.pair((x, x)), x.sum()


def test_capture_inputs_records_first_calls_on_cpu_and_cleans_up():
    """What conversion records (ghostify's calibration, verify's isolated check): capture(..., inputs=True)
    on the first call (``name#0``) of each layer, in eval mode without gradients."""
    torch.manual_seed(0)
    model = _Reuse().train()
    x = torch.randn(3, 2, 4, 4)
    stats = model.bn.running_mean.clone()
    with eval_mode(model), torch.no_grad(), capture(model, ["conv#0", "bn#0", "pair#0"], to="cpu",
                                                    dtype=torch.float64, inputs=True) as maps:
        out = model(x)
    with torch.no_grad():
        first = model.conv(x)
    assert torch.equal(maps.inputs["conv"], x.double()) and torch.equal(maps["conv"], first.double())
    assert "conv#1" not in maps and "conv#1" not in maps.inputs  # the first call only
    assert maps["conv"].dtype == torch.float64 and maps["conv"].device.type == "cpu"
    assert "pair" not in maps  # a tuple output has no entry of its own name (only pair[0], pair[1])
    assert isinstance(out, tuple) and not out[1].requires_grad
    assert model.training and model.bn.training and torch.equal(model.bn.running_mean, stats)  # eval mode used
    assert not any(m._forward_hooks for m in model.modules())
    with capture(model, ["conv#0"]) as maps, torch.no_grad():
        model(x)
    assert maps.inputs == {} and set(maps) == {"conv"}  # inputs only when asked


def test_conversion_records_through_capture():
    from analysis.convert.independent import _record
    from analysis.convert.verify import _io

    torch.manual_seed(0)
    model = _Reuse().train()
    x = torch.randn(5, 2, 4, 4, dtype=torch.float64)
    stats = model.bn.running_mean.clone()
    with torch.no_grad():
        first = model.conv(x.float())
    outs, ins = _record(model, ["conv", "bn"], x, keep_inputs=True, batch_size=2)  # three forwards
    assert torch.equal(ins["conv"], x.float()) and torch.equal(outs["conv"], first)
    assert outs["bn"].shape == (5, 2, 4, 4) and outs["conv"].dtype == torch.float32
    assert _record(model, ["conv"], x, keep_inputs=False)[1] == {}
    with pytest.raises(GhostmapsError, match="returned tuple"):
        _io(model, ["conv"], x.float())
    assert model.training and model.bn.training and torch.equal(model.bn.running_mean, stats)
    assert hook_counts(model) == 0


def test_capture_without_copy_hands_the_callback_the_layer_output_itself(tiny):
    outputs, seen = [], []
    grab = tiny.conv1.register_forward_hook(lambda _m, _a, out: outputs.append(out))
    try:
        with torch.no_grad(), capture(tiny, "conv1", store=False, copy=False,
                                      callback=lambda n, t: seen.append((n, t.data_ptr(), t.clone()))):
            tiny(torch.randn(2, 3, 8, 8))
    finally:
        grab.remove()
    (name, ptr, value), = seen
    assert name == "conv1" and ptr == outputs[0].data_ptr()  # no copy was made
    torch.testing.assert_close(value, outputs[0])
    with capture(tiny, "conv1", store=False, callback=lambda n, t: seen.append(t.data_ptr())):
        tiny(torch.randn(2, 3, 8, 8))
    assert seen[-1] != outputs[0].data_ptr()  # the default still copies
    for bad in ({"store": True, "callback": print}, {"store": False}, {"store": False, "callback": print,
                                                                        "to": "cpu"}):
        with pytest.raises(GhostmapsError, match="copy=False"), capture(tiny, "conv1", copy=False, **bad):
            pass
    assert hook_counts(tiny) == 0
