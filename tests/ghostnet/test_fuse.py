"""Deploy mode: BN folding keeps outputs, never mutates the input, and exports to ONNX."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import ghostnet
from ghostnet import GhostNet, fuse, ghost_resnet50, ghost_resnet56, ghost_vgg16, ghostnet_050, ghostnet_100
from ghostnet.fuse import fold_bn
from ghostnet.variants import resnet56, vgg16_cifar
from tests.helpers import onnx_and_torch_outputs, randomize_


def _bns(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize(
    "builder,size",
    [
        (ghostnet_100, 64),
        (lambda: GhostNet(width=1.3), 64),
        (ghost_vgg16, 32),
        (vgg16_cifar, 32),
        (ghost_resnet56, 32),
        (resnet56, 32),
        (lambda: ghost_resnet50(ratio=4), 64),
    ],
    ids=["ghostnet_100", "ghostnet_130", "ghost_vgg16", "vgg16", "ghost_resnet56", "resnet56", "ghost_resnet50"],
)
def test_fused_outputs_match_and_no_bn_is_left(builder, size):
    model = randomize_(builder(), seed=7).eval()
    snapshot = copy.deepcopy(model.state_dict())
    fused = fuse(model)
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = model(x), fused(x)
    assert expected.abs().max() > 1e-2
    assert (got - expected).abs().max().item() <= 1e-4
    assert _bns(fused) == 0 and _bns(model) > 0
    assert fused is not model
    assert model.state_dict().keys() == snapshot.keys()
    assert all(torch.equal(v, snapshot[k]) for k, v in model.state_dict().items())  # input untouched


def test_fused_ghostnet_keeps_structure_and_names():
    model = ghostnet_050().train()
    fused = model.fuse()
    assert model.training  # the user's model keeps its mode
    assert isinstance(fused, GhostNet) and not fused.training
    gm = fused.blocks[1][0].ghost1
    assert isinstance(gm, ghostnet.GhostModule)
    assert list(gm.primary_conv._modules) == ["0", "2"]  # BN slot gone, ReLU keeps its name
    assert gm.primary_conv[0].bias is not None
    assert list(fused.blocks[1][0].ghost2.primary_conv._modules) == ["0"]  # Identity placeholder dropped too
    assert isinstance(fused.blocks[1][0].bn_dw, nn.Identity)
    assert list(fused.blocks[1][0].shortcut._modules) == ["0", "2"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        intrinsic, ghost = gm.forward_parts(fused.act1(fused.conv_stem(x)))
    assert intrinsic.shape[1] == ghost.shape[1] == 12
    assert fused.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert fuse(model, channels_last=False).conv_stem.weight.is_contiguous()


def test_fold_bn_formula_on_conv_and_linear():
    torch.manual_seed(0)
    for layer, bn, x in [
        (nn.Conv2d(3, 5, 3, bias=True), nn.BatchNorm2d(5), torch.randn(2, 3, 7, 7)),
        (nn.Linear(6, 4, bias=False), nn.BatchNorm1d(4), torch.randn(5, 6)),
    ]:
        randomize_(nn.Sequential(layer, bn))
        bn.eval()
        with torch.no_grad():
            shape = (1, -1) + (1,) * (x.dim() - 2)
            y = layer(x)
            expected = (y - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
            expected = expected * bn.weight.view(shape) + bn.bias.view(shape)
            torch.testing.assert_close(fold_bn(layer, bn)(x), expected, atol=1e-5, rtol=1e-5)


def test_conv_output_used_twice_is_not_folded():
    class Branching(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = randomize_(Branching()).eval()
    fused = fuse(model)
    assert isinstance(fused.bn, nn.BatchNorm2d)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x))


class _Shared(nn.Module):
    """``bn(conv(x))`` plus a second call of one of the two modules: ``conv(x)`` (shared conv), or ``bn`` of
    a non-conv input (shared BN)."""

    def __init__(self, shared: str) -> None:
        super().__init__()
        self.shared = shared
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.proj = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        other = self.conv(x) if self.shared == "conv" else self.bn(torch.relu(self.proj(x)))
        return self.bn(self.conv(x)) + other


def _bn_by_hand(bn: nn.BatchNorm2d, t: torch.Tensor) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    scale = bn.weight.view(shape) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
    return (t - bn.running_mean.view(shape)) * scale + bn.bias.view(shape)


@pytest.mark.parametrize("shared", ["conv", "bn"])
def test_module_called_twice_is_not_folded(shared):
    model = randomize_(_Shared(shared), seed=4).eval()
    fused = fuse(model)
    assert isinstance(fused.bn, nn.BatchNorm2d) and fused.conv.bias is not None
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        conv, bn = model.conv, model.bn  # independent computation: eval-mode BN by hand
        other = conv(x) if shared == "conv" else _bn_by_hand(bn, torch.relu(model.proj(x)))
        expected = _bn_by_hand(bn, conv(x)) + other
        assert (model(x) - expected).abs().max() < 1e-5
        torch.testing.assert_close(fused(x), expected, atol=1e-5, rtol=1e-5)


def test_untraceable_model_and_non_module_are_rejected():
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(ValueError, match="could not trace"):
        fuse(DataDependent())
    with pytest.raises(TypeError, match="nn.Module"):
        fuse(lambda x: x)


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_onnx_export_matches_pytorch(tmp_path, fused):
    pytest.importorskip("onnxruntime")
    model = randomize_(ghostnet_100(), seed=3).eval()
    if fused:
        model = fuse(model)
    onnx_out, expected = onnx_and_torch_outputs(model, str(tmp_path / "ghostnet_100.onnx"))
    assert np.abs(onnx_out - expected).max() <= 1e-4
