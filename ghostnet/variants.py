"""Plug-and-play Ghost versions of classic networks (paper Tables 4 and 5) and their plain baselines.

Every conv except the first (the stem) is replaced, together with the BatchNorm after it, by a
``GhostModule(relu=False)``: the module's own BNs (one per half, ``out_channels`` in all) stand in for the
replaced BN, so no BN is stacked twice and no registered parameter goes unused. Activations stay where
the original network has them. Dilation, when used, goes to the primary conv only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from .layers import GhostModule
from .registry import CIFAR_MEAN, CIFAR_STD, register_model

ConvUnit = Callable[[int, int, int, int], nn.Module]  # (in, out, kernel, stride) -> conv + BN

VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def plain_unit(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> nn.Sequential:
    """Conv2d (no bias) + BatchNorm2d: the unit a Ghost module replaces."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    )


def ghost_unit(ratio: int = 2, dw_size: int = 3) -> ConvUnit:
    """A factory for ``GhostModule(relu=False)`` units with the given s (``ratio``) and d (``dw_size``)."""

    def make(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> GhostModule:
        return GhostModule(in_channels, out_channels, kernel_size, ratio, dw_size, stride, relu=False)

    return make


class VGGCifar(nn.Module):
    """VGG-16 for 32x32 inputs as in Li et al. 2017 ("Pruning filters", the paper's l1-VGG-16 baseline):
    13 conv+BN+ReLU units, 5 max-pools, then Linear(512, 512) + BN + ReLU and Linear(512, classes)
    (15.0M params, 313M MACs)."""

    def __init__(self, num_classes: int = 10, unit: ConvUnit = plain_unit, cfg: list[int | str] = VGG16_CFG):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for i, v in enumerate(cfg):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            make = plain_unit if i == 0 else unit  # the first conv stays ordinary
            layers += [make(channels, int(v), 3, 1), nn.ReLU(inplace=True)]
            channels = int(v)
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Sequential(
            nn.Linear(channels, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Linear(512, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


class PadShortcut(nn.Module):
    """Parameter-free CIFAR ResNet shortcut ("option A"): subsample by ``stride`` and zero-pad channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad_front = (out_channels - in_channels) // 2
        self.pad_back = out_channels - in_channels - self.pad_front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))


class BasicBlock(nn.Module):
    """3x3 unit + ReLU, 3x3 unit, add the shortcut, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, unit: ConvUnit) -> None:
        super().__init__()
        self.conv1 = unit(in_channels, out_channels, 3, stride)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = unit(out_channels, out_channels, 3, 1)
        same = stride == 1 and in_channels == out_channels
        self.shortcut = nn.Identity() if same else PadShortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.relu(self.conv1(x))) + self.shortcut(x))


class ResNetCifar(nn.Module):
    """CIFAR ResNet (He et al. 2016, §4.2): depth = 6n + 2, stages of 16/32/64 channels."""

    def __init__(self, depth: int = 56, num_classes: int = 10, unit: ConvUnit = plain_unit) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"ResNetCifar: depth must be 6n + 2 (20, 32, 44, 56, 110 ...), got {depth}.")
        n = (depth - 2) // 6
        self.conv1 = plain_unit(3, 16, 3, 1)  # the first conv stays ordinary
        self.relu = nn.ReLU(inplace=True)
        stages, channels = [], 16
        for i, width in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(channels, width, stride, unit))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.relu(self.conv1(x)))))
        return self.fc(self.flatten(self.avgpool(x)))


def vgg16_cifar(num_classes: int = 10) -> VGGCifar:
    """Plain CIFAR VGG-16 with BN (the paper's 15M / 313M baseline)."""
    return VGGCifar(num_classes)


@register_model(input_size=(3, 32, 32), mean=CIFAR_MEAN, std=CIFAR_STD, crop_pct=1.0, num_classes=10, dataset="cifar-10")
def ghost_vgg16(num_classes: int = 10, ratio: int = 2, dw_size: int = 3) -> VGGCifar:
    """Ghost-VGG-16 for CIFAR (paper Table 4: 7.7M params, 158M MACs at s=2, d=3)."""
    return VGGCifar(num_classes, ghost_unit(ratio, dw_size))


def resnet56(num_classes: int = 10) -> ResNetCifar:
    """Plain CIFAR ResNet-56 (the paper's 0.85M / 125M baseline)."""
    return ResNetCifar(56, num_classes)


@register_model(input_size=(3, 32, 32), mean=CIFAR_MEAN, std=CIFAR_STD, crop_pct=1.0, num_classes=10, dataset="cifar-10")
def ghost_resnet56(num_classes: int = 10, ratio: int = 2, dw_size: int = 3) -> ResNetCifar:
    """Ghost-ResNet-56 for CIFAR (paper Table 4: 0.43M params, 63M MACs at s=2, d=3)."""
    return ResNetCifar(56, num_classes, ghost_unit(ratio, dw_size))


def _ghost_from_conv(conv: nn.Conv2d, ratio: int, dw_size: int) -> GhostModule:
    if conv.groups != 1 or conv.kernel_size[0] != conv.kernel_size[1] or conv.stride[0] != conv.stride[1]:
        raise ValueError(f"ghost_resnet50: cannot replace {conv}: need a square, ungrouped conv.")
    return GhostModule(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size[0],
        ratio,
        dw_size,
        conv.stride[0],
        relu=False,
        dilation=conv.dilation[0],
    )


@register_model()
def ghost_resnet50(
    ratio: int = 2,
    num_classes: int = 1000,
    dw_size: int = 3,
    replace_stride_with_dilation: list[bool] | None = None,
) -> torchvision.models.ResNet:
    """Ghost-ResNet-50 (paper Table 5; s=2: 13.0M / 2.2B, s=4: 6.5M / 1.2B as published).

    A torchvision ResNet-50 whose every conv + BN pair except the stem, the 1x1 downsample convs included,
    is a ``GhostModule(relu=False)`` (the BN slot becomes ``nn.Identity``).
    """
    model = torchvision.models.resnet50(
        weights=None, num_classes=num_classes, replace_stride_with_dilation=replace_stride_with_dilation
    )
    for block in model.modules():
        if isinstance(block, torchvision.models.resnet.Bottleneck):
            for conv_name, bn_name in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):
                setattr(block, conv_name, _ghost_from_conv(getattr(block, conv_name), ratio, dw_size))
                setattr(block, bn_name, nn.Identity())
            if block.downsample is not None:
                block.downsample[0] = _ghost_from_conv(block.downsample[0], ratio, dw_size)
                block.downsample[1] = nn.Identity()
    return model
