"""GhostNet building blocks: squeeze-excite, the Ghost bottleneck and the final 1x1 ConvBnAct.

Submodule names follow the official release so its state dict loads with ``strict=True``
(``ghost1``, ``conv_dw``, ``bn_dw``, ``se.conv_reduce``, ``se.conv_expand``, ``ghost2``, ``shortcut.{0..3}``,
``conv``/``bn1``/``act1``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .module import GhostModule


def make_divisible(value: float, divisor: int = 4, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``min_value``, default ``divisor``),
    adding one ``divisor`` when rounding down lost more than 10 %. This is GhostNet's channel rounding."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class SqueezeExcite(nn.Module):
    """Channel gate: global average pool, 1x1 reduce (bias) + ReLU, 1x1 expand (bias), hard sigmoid
    ``relu6(x + 3) / 6``, multiply. Reduced width = make_divisible(channels * se_ratio, divisor)."""

    def __init__(self, channels: int, se_ratio: float = 0.25, divisor: int = 4) -> None:
        super().__init__()
        if channels < 1 or not 0 < se_ratio <= 1:
            raise ValueError(
                f"SqueezeExcite: need channels >= 1 and 0 < se_ratio <= 1, got channels={channels}, "
                f"se_ratio={se_ratio}; GhostNet uses se_ratio=0.25."
            )
        self.reduced_channels = make_divisible(channels * se_ratio, divisor)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_reduce = nn.Conv2d(channels, self.reduced_channels, 1, bias=True)
        self.act1 = nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(self.reduced_channels, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.conv_expand(self.act1(self.conv_reduce(self.avg_pool(x))))
        return x * F.hardsigmoid(gate)  # hardsigmoid(x) == relu6(x + 3) / 6


class ConvBnAct(nn.Module):
    """Conv (no bias) -> BN -> ReLU, the last GhostNet stage (``blocks.9.0``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.act1 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act1(self.bn1(self.conv(x)))


class GhostBottleneck(nn.Module):
    """Ghost bottleneck (paper Fig. 3): Ghost expansion (ReLU) -> [stride-2 depthwise conv + BN] -> [SE]
    -> linear Ghost projection, plus a shortcut (identity when shapes agree, else depthwise conv + BN +
    1x1 conv + BN). No activation after the add."""

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        dw_kernel_size: int = 3,
        stride: int = 1,
        se_ratio: float = 0.0,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"GhostBottleneck: stride must be 1 or 2, got {stride}.")
        if dw_kernel_size < 1 or dw_kernel_size % 2 == 0:
            raise ValueError(f"GhostBottleneck: dw_kernel_size must be odd (3 or 5), got {dw_kernel_size}.")
        self.stride = stride
        pad = (dw_kernel_size - 1) // 2
        self.ghost1 = GhostModule(in_channels, mid_channels, relu=True)
        if stride > 1:
            self.conv_dw = nn.Conv2d(
                mid_channels, mid_channels, dw_kernel_size, stride, pad, groups=mid_channels, bias=False
            )
            self.bn_dw = nn.BatchNorm2d(mid_channels)
        else:
            self.conv_dw = None
            self.bn_dw = None
        self.se = SqueezeExcite(mid_channels, se_ratio) if se_ratio > 0 else None
        self.ghost2 = GhostModule(mid_channels, out_channels, relu=False)
        if in_channels == out_channels and stride == 1:
            self.shortcut = nn.Sequential()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, in_channels, dw_kernel_size, stride, pad, groups=in_channels, bias=False),
                nn.BatchNorm2d(in_channels),
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ghost1(x)
        if self.conv_dw is not None:
            y = self.bn_dw(self.conv_dw(y))
        if self.se is not None:
            y = self.se(y)
        return self.ghost2(y) + self.shortcut(x)
