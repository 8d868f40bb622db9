"""Ghost layers and the small blocks GhostNet is made of.

* :class:`GhostModule` (Han et al., CVPR 2020, §3.1): a few intrinsic maps from an ordinary conv, the rest
  from cheap depthwise convs on those maps; each half carries its own BN (and optionally a ReLU), so it
  replaces a conv *and* its BN in a network built for it. Submodules ``primary_conv`` /
  ``cheap_operation`` = Sequential(Conv2d, BatchNorm2d, ReLU | Identity) give the official state-dict keys.
* :class:`GhostConv`: a Ghost convolution standing in for one pretrained ``nn.Conv2d`` *in place* (same
  geometry, no BN or activation between the primary and the cheap op, output channels in the original
  order); ``analysis.convert.ghostify`` builds and fits them.
* :class:`SqueezeExcite`, :class:`ConvBnAct`, :func:`make_divisible`: GhostNet's channel gate, its last 1x1
  stage and its channel rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .validation import GhostConfigError, check_odd_size, check_ratio

__all__ = ["ConvBnAct", "GhostConv", "GhostModule", "SqueezeExcite", "ghost_conv_like", "make_divisible"]


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


class GhostConv(nn.Module):
    """A Ghost convolution standing in for one ``nn.Conv2d`` (same input/output shape, no BN or activation).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, bias, padding_mode: as the conv
            being replaced (``primary`` copies them).
        ratio: ``s``; the primary conv makes ``ceil(out / s)`` intrinsic maps, the cheap op the rest.
        dw_size: ``d``, the cheap depthwise kernel size (odd, so maps keep their size).
        order: optional permutation of ``range(out_channels)``: output channel ``j`` is
            ``cat([intrinsic, ghosts])[:, order[j]]``. ``None`` keeps the module order.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int] = 1,
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 0,
                 dilation: int | tuple[int, int] = 1, bias: bool = False, padding_mode: str = "zeros",
                 ratio: int = 2, dw_size: int = 3, order: Sequence[int] | None = None) -> None:
        super().__init__()
        ratio = check_ratio(ratio, "ratio")
        dw_size = check_odd_size(dw_size, "dw_size")
        if out_channels < 2:
            raise GhostConfigError(f"GhostConv: out_channels must be >= 2 to have a ghost map, got {out_channels}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.ratio, self.dw_size = ratio, dw_size
        self.init_channels = math.ceil(out_channels / ratio)
        self.ghost_channels = out_channels - self.init_channels
        m, g = self.init_channels, self.ghost_channels
        self.primary = nn.Conv2d(in_channels, m, kernel_size, stride=stride, padding=padding, dilation=dilation,
                                 bias=bias, padding_mode=padding_mode)
        if g == m * (ratio - 1):
            self.cheap = nn.Conv2d(m, g, dw_size, padding=dw_size // 2, groups=m, bias=True)
            self.cheap_index: torch.Tensor | None = None
        else:  # the last intrinsic map feeds fewer ghosts: gather the source of each slot
            self.cheap = nn.Conv2d(g, g, dw_size, padding=dw_size // 2, groups=g, bias=True)
            self.register_buffer("cheap_index", torch.arange(g) // (ratio - 1))
        if order is not None:
            idx = torch.as_tensor(list(order), dtype=torch.long)
            if idx.shape != (out_channels,) or not torch.equal(idx.sort().values, torch.arange(out_channels)):
                raise GhostConfigError(f"GhostConv: order must be a permutation of range({out_channels}); got "
                                    f"{list(order)[:8]}...")
            self.register_buffer("order", idx)
        else:
            self.order: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        intrinsic = self.primary(x)
        src = intrinsic if self.cheap_index is None else intrinsic.index_select(1, self.cheap_index)
        out = torch.cat([intrinsic, self.cheap(src)], dim=1)
        return out if self.order is None else out.index_select(1, self.order)

    def load_fitted(self, primary_weight: torch.Tensor, primary_bias: torch.Tensor | None,
                    cheap_weight: torch.Tensor, cheap_bias: torch.Tensor) -> None:
        """Copy fitted weights in (shapes as ``primary``/``cheap``; ``cheap_*`` may have extra trailing
        slots, as ``Ghostability.cheap_weights()`` returns ``m * (ratio - 1)`` of them)."""
        g = self.ghost_channels
        with torch.no_grad():
            self.primary.weight.copy_(primary_weight)
            if self.primary.bias is not None and primary_bias is not None:
                self.primary.bias.copy_(primary_bias)
            self.cheap.weight.copy_(cheap_weight[:g])
            self.cheap.bias.copy_(cheap_bias[:g])

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able) that rebuild this module's structure."""
        p = self.primary
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(p.kernel_size), "stride": list(p.stride),
                "padding": p.padding if isinstance(p.padding, str) else list(p.padding),
                "dilation": list(p.dilation), "bias": p.bias is not None, "padding_mode": p.padding_mode,
                "ratio": self.ratio, "dw_size": self.dw_size,
                "order": None if self.order is None else self.order.tolist()}

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> GhostConv:
        """Inverse of :meth:`config` (weights are random; load a state dict after)."""
        tup = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k != "order"}
        return cls(**tup, order=cfg.get("order"))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, ratio={self.ratio}, dw_size={self.dw_size}, "
                f"intrinsic={self.init_channels}" + (", reordered" if self.order is not None else ""))


def ghost_conv_like(conv: nn.Conv2d, ratio: int = 2, dw_size: int = 3,
                    order: Sequence[int] | None = None) -> GhostConv:
    """A (randomly initialised) GhostConv with ``conv``'s shape and geometry, on its device and dtype."""
    g = GhostConv(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                  padding=conv.padding, dilation=conv.dilation, bias=conv.bias is not None,
                  padding_mode=conv.padding_mode, ratio=ratio, dw_size=dw_size, order=order)
    return g.to(device=conv.weight.device, dtype=conv.weight.dtype)
