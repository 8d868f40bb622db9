"""The Ghost module (Han et al., CVPR 2020, §3.1): a few intrinsic maps from an ordinary conv, the rest
from cheap depthwise convs on those maps.

Stable public surface (``ghostnet.convert`` builds on it; keep these names):

- constructor ``GhostModule(in_channels, out_channels, kernel_size=1, ratio=2, dw_size=3, stride=1,
  relu=True, dilation=1)``;
- attributes ``in_channels``, ``out_channels``, ``kernel_size``, ``ratio``, ``dw_size``, ``stride``,
  ``dilation``, ``use_relu``, ``init_channels`` (= ceil(out / ratio), the intrinsic maps) and
  ``new_channels`` (= init * (ratio - 1), the ghost maps before the cut to ``out_channels``);
- submodules ``primary_conv`` = Sequential(Conv2d, BatchNorm2d, ReLU | Identity) and
  ``cheap_operation`` = Sequential(depthwise Conv2d, BatchNorm2d, ReLU | Identity). The indices 0/1 of the
  conv and the BN give the official state-dict keys (``primary_conv.0.weight``, ``cheap_operation.1.bias``...).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _require_int(name: str, value: object, minimum: int, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"GhostModule: {name} must be an integer >= {minimum}, got {value!r}; {fix}")
    return value


class GhostModule(nn.Module):
    """Drop-in for a Conv2d(+BN[+ReLU]) making ``out_channels`` maps at about 1/ratio of the cost.

    The primary conv (``kernel_size``, ``stride``, ``dilation``) makes ``init_channels`` intrinsic maps;
    the cheap ``dw_size`` x ``dw_size`` conv (groups = ``init_channels``, stride 1) makes ``ratio - 1`` ghost
    maps from each one. The two are concatenated and cut to ``out_channels`` (the cut only drops channels
    when ``out_channels`` is not a multiple of ``ratio``; those dropped cheap-conv channels are the one
    place where weights are computed but never reach the output). Each half carries its own BatchNorm, so
    the module replaces a conv *and* the BN after it. With ``relu=True`` both halves end in a ReLU (the
    GhostNet expansion module); with ``relu=False`` the module is linear up to BN.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        ratio: int = 2,
        dw_size: int = 3,
        stride: int = 1,
        relu: bool = True,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        _require_int("in_channels", in_channels, 1, "pass the channel count of the input feature map.")
        _require_int("out_channels", out_channels, 1, "pass the number of output maps (>= 1).")
        _require_int("kernel_size", kernel_size, 1, "use the kernel size of the conv being replaced (e.g. 1 or 3).")
        _require_int("ratio", ratio, 2, "use ratio=2 (the paper's s=2); ratio 1 would be a plain conv.")
        _require_int("dw_size", dw_size, 1, "use dw_size=3 (the paper's d=3).")
        if dw_size % 2 == 0:
            raise ValueError(
                f"GhostModule: dw_size must be odd so the cheap conv keeps the map size, got {dw_size}; "
                "use dw_size=3 (the paper's d=3), or 1, 5, 7."
            )
        _require_int("stride", stride, 1, "use stride=1 or 2.")
        _require_int("dilation", dilation, 1, "use dilation=1 unless the conv being replaced is dilated.")

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.ratio = ratio
        self.dw_size = dw_size
        self.stride = stride
        self.dilation = dilation
        self.use_relu = bool(relu)
        self.init_channels = math.ceil(out_channels / ratio)
        self.new_channels = self.init_channels * (ratio - 1)

        self.primary_conv = nn.Sequential(
            nn.Conv2d(
                in_channels,
                self.init_channels,
                kernel_size,
                stride=stride,
                padding=dilation * (kernel_size // 2),
                dilation=dilation,
                bias=False,
            ),
            nn.BatchNorm2d(self.init_channels),
            nn.ReLU(inplace=True) if relu else nn.Identity(),
        )
        self.cheap_operation = nn.Sequential(
            nn.Conv2d(
                self.init_channels,
                self.new_channels,
                dw_size,
                stride=1,
                padding=dw_size // 2,
                groups=self.init_channels,
                bias=False,
            ),
            nn.BatchNorm2d(self.new_channels),
            nn.ReLU(inplace=True) if relu else nn.Identity(),
        )

    def forward_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(intrinsic, ghost)``: the primary output (``init_channels`` maps) and the cheap output
        already cut to ``out_channels - init_channels`` maps, so ``cat(intrinsic, ghost) == forward(x)``."""
        intrinsic = self.primary_conv(x)
        ghost = self.cheap_operation(intrinsic)
        keep = self.out_channels - self.init_channels
        if keep != self.new_channels:
            ghost = ghost[:, :keep]
        return intrinsic, ghost

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        intrinsic = self.primary_conv(x)
        out = torch.cat([intrinsic, self.cheap_operation(intrinsic)], dim=1)
        if self.init_channels + self.new_channels != self.out_channels:  # python ints: fx/ONNX friendly
            out = out[:, : self.out_channels]
        return out

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, ratio={self.ratio}, "
            f"dw_size={self.dw_size}, stride={self.stride}, relu={self.use_relu}"
            + (f", dilation={self.dilation}" if self.dilation != 1 else "")
        )
