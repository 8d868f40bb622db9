"""The Ghost bottleneck (paper Fig. 3), GhostNet's repeated block.

Submodule names follow the official release so its state dict loads with ``strict=True``
(``ghost1``, ``conv_dw``, ``bn_dw``, ``se.conv_reduce``, ``se.conv_expand``, ``ghost2``, ``shortcut.{0..3}``).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import GhostModule, SqueezeExcite

__all__ = ["GhostBottleneck"]


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
