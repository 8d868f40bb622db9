"""Ghost-VGG-16, Ghost-ResNet-56, Ghost-ResNet-50: structure, closed-form params/MACs, no unused params."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from analysis.convert.macs import count_macs
from ghostnet import GhostModule, ghost_resnet50, ghost_resnet56, ghost_vgg16
from ghostnet.variants import ResNetCifar, resnet56, vgg16_cifar

D = 3  # the paper's d


def unit_cost(cin: int, cout: int, k: int, hw: int, ratio: int | None) -> tuple[int, int]:
    """(params, MACs) of one conv+BN unit at output size hw x hw: plain when ratio is None, else a Ghost
    module (paper §3.1: n/s maps from a k x k conv, the rest from d x d depthwise ops; BN on all maps)."""
    if ratio is None:
        return cout * cin * k * k + 2 * cout, cout * cin * k * k * hw * hw
    init = math.ceil(cout / ratio)
    new = init * (ratio - 1)
    weights = init * cin * k * k + new * D * D
    return weights + 2 * (init + new), weights * hw * hw


def total(units: list[tuple[int, int, int, int]], ratio: int | None, first_plain: bool = True) -> tuple[int, int]:
    params = macs = 0
    for i, (cin, cout, k, hw) in enumerate(units):
        p, m = unit_cost(cin, cout, k, hw, None if (first_plain and i == 0) else ratio)
        params, macs = params + p, macs + m
    return params, macs


def resnet56_units() -> list[tuple[int, int, int, int]]:
    units = [(3, 16, 3, 32)]
    cin = 16
    for width, hw in ((16, 32), (32, 16), (64, 8)):
        for _ in range(9):
            units += [(cin, width, 3, hw), (width, width, 3, hw)]
            cin = width
    return units


def vgg16_units() -> list[tuple[int, int, int, int]]:
    plan = [(64, 32), (64, 32), (128, 16), (128, 16), (256, 8), (256, 8), (256, 8)] + [(512, 4)] * 3 + [(512, 2)] * 3
    units, cin = [], 3
    for cout, hw in plan:
        units.append((cin, cout, 3, hw))
        cin = cout
    return units


def resnet50_units() -> list[tuple[int, int, int, int]]:
    units = [(3, 64, 7, 112)]
    cin, hw = 64, 56
    for stage, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
        for b in range(blocks):
            stride = 2 if stage > 0 and b == 0 else 1
            out_hw = hw // stride
            units += [(cin, width, 1, hw), (width, width, 3, out_hw), (width, 4 * width, 1, out_hw)]
            if b == 0:
                units.append((cin, 4 * width, 1, out_hw))  # downsample
            cin, hw = 4 * width, out_hw
    return units


CASES = {
    "vgg16": (vgg16_cifar, vgg16_units, None, 512 * 512 + 512 + 2 * 512 + 512 * 10 + 10, 512 * 512 + 5120, 32),
    "ghost_vgg16": (ghost_vgg16, vgg16_units, 2, 512 * 512 + 512 + 2 * 512 + 5130, 512 * 512 + 5120, 32),
    "resnet56": (resnet56, resnet56_units, None, 650, 640, 32),
    "ghost_resnet56": (ghost_resnet56, resnet56_units, 2, 650, 640, 32),
}


@pytest.mark.parametrize("name", list(CASES))
def test_cifar_params_and_macs_match_closed_form(name):
    builder, units, ratio, head_params, head_macs, size = CASES[name]
    params, macs = total(units(), ratio)
    report = count_macs(builder(), (1, 3, size, size))
    assert report.params == sum(p.numel() for p in builder().parameters()) == params + head_params
    assert report.total_macs == macs + head_macs


@pytest.mark.parametrize("ratio", [2, 4])
def test_ghost_resnet50_params_and_macs_match_closed_form(ratio):
    model = ghost_resnet50(ratio=ratio)
    params, macs = total(resnet50_units(), ratio)
    report = count_macs(model, (1, 3, 224, 224))
    assert report.params == params + 2048 * 1000 + 1000
    assert report.total_macs == macs + 2048 * 1000


@pytest.mark.parametrize(
    "builder,size",
    [(ghost_vgg16, 32), (ghost_resnet56, 32), (lambda: ghost_resnet50(ratio=4, num_classes=7), 64)],
    ids=["vgg16", "resnet56", "resnet50"],
)
def test_every_conv_but_the_first_is_a_ghost_module_and_every_param_is_used(builder, size):
    torch.manual_seed(0)
    model = builder()
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    ghosts = [n for n, m in model.named_modules() if isinstance(m, GhostModule)]
    outside = [c for c in convs if not any(c.startswith(g + ".") for g in ghosts)]
    assert len(outside) == 1 and outside[0] in ("conv1.0", "features.0.0", "conv1")  # the stem only
    assert all(type(m) is nn.Conv2d for m in model.modules() if isinstance(m, nn.Conv2d))  # no subclasses
    assert not any(isinstance(m, nn.Conv2d) for m in model.modules() if isinstance(m, GhostModule))
    model.train()
    out = model(torch.randn(2, 3, size, size))
    out.square().sum().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert unused == []


def test_ghost_resnet50_replaces_downsample_and_puts_dilation_on_the_primary_only():
    model = ghost_resnet50(ratio=2, replace_stride_with_dilation=[False, False, True])
    assert isinstance(model.layer1[0].downsample[0], GhostModule)
    assert isinstance(model.layer1[0].downsample[1], nn.Identity)
    conv2 = model.layer4[1].conv2
    assert conv2.primary_conv[0].dilation == (2, 2) and conv2.primary_conv[0].padding == (2, 2)
    assert conv2.cheap_operation[0].dilation == (1, 1)
    with torch.no_grad():
        features = nn.Sequential(*list(model.children())[:-2]).eval()(torch.randn(1, 3, 64, 64))
    assert features.shape == (1, 2048, 4, 4)  # output stride 16


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="ratio"):
        ghost_resnet56(ratio=1)
    with pytest.raises(ValueError, match="depth must be 6n"):
        ResNetCifar(depth=51)
