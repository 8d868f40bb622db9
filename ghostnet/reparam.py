"""Structural re-parameterisation (RepVGG / MobileOne style) for GhostNetV3.

At training time a conv is replaced by several parallel conv + BN branches (plus, where shapes allow, a
1x1 "scale" branch and a BN-only identity branch) whose outputs are summed. Every branch is linear in its
input in eval mode, so the sum is one conv with a bias: ``merge_branches`` builds it. Sums are formed in
float64 and cast back once, so the merged conv differs from the branch sum only by float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ConvBn(nn.Module):
    """Conv (no bias, 'same' padding for odd kernels) -> BatchNorm: one re-parameterisable branch.

    Submodules are ``conv`` and ``bn``, the names the official GhostNetV3 release uses.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"ConvBn: kernel_size must be odd so branches share a centre, got {kernel_size}.")
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BN as ``y = x * scale + shift`` (float64)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("reparameterize: a BatchNorm without running statistics cannot be folded.")
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.double() if bn.affine else torch.ones_like(var)
    beta = bn.bias.double() if bn.affine else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - mean * scale


def _identity_kernel(channels: int, in_per_group: int, kernel_size: int, device: torch.device) -> torch.Tensor:
    """The kernel of a conv (``channels`` outputs, ``in_per_group`` inputs each) that copies its input."""
    kernel = torch.zeros(channels, in_per_group, kernel_size, kernel_size, dtype=torch.float64, device=device)
    centre = kernel_size // 2
    kernel[torch.arange(channels), torch.arange(channels) % in_per_group, centre, centre] = 1.0
    return kernel


def merge_branches(branches: Sequence[ConvBn], skip: nn.BatchNorm2d | None = None) -> nn.Conv2d:
    """One ``Conv2d`` (with bias) equal, in eval mode, to ``sum(b(x) for b in branches) + skip(x)``.

    All branches must share in/out channels, stride and groups; smaller (1x1) kernels are zero-padded to the
    largest kernel's centre, which lines up because every branch uses 'same' padding ``k // 2``. ``skip``
    (a BN applied to the input itself) needs in == out channels and stride 1.
    """
    if not branches:
        raise ValueError("merge_branches: need at least one conv + BN branch.")
    convs = [b.conv for b in branches]
    template = max(convs, key=lambda c: c.kernel_size[0])
    size = template.kernel_size[0]
    for conv in convs:
        same_geometry = (conv.in_channels, conv.out_channels, conv.stride, conv.groups, conv.dilation) == (
            template.in_channels, template.out_channels, template.stride, template.groups, template.dilation
        )
        if not same_geometry or conv.padding != (conv.kernel_size[0] // 2,) * 2 or conv.kernel_size[0] != conv.kernel_size[1]:
            raise ValueError(f"merge_branches: branch {conv} does not line up with {template}.")
    weight = torch.zeros_like(template.weight, dtype=torch.float64)
    bias = torch.zeros(template.out_channels, dtype=torch.float64, device=template.weight.device)
    for branch in branches:
        scale, shift = _bn_scale_shift(branch.bn)
        pad = (size - branch.conv.kernel_size[0]) // 2
        weight += F.pad(branch.conv.weight.double(), [pad] * 4) * scale.view(-1, 1, 1, 1)
        bias += shift
    if skip is not None:
        if template.in_channels != template.out_channels or template.stride != (1, 1):
            raise ValueError("merge_branches: an identity (BN-only) branch needs in == out channels and stride 1.")
        scale, shift = _bn_scale_shift(skip)
        in_per_group = template.in_channels // template.groups
        weight += _identity_kernel(template.out_channels, in_per_group, size, weight.device) * scale.view(-1, 1, 1, 1)
        bias += shift
    merged = nn.Conv2d(
        template.in_channels,
        template.out_channels,
        size,
        template.stride,
        template.padding,
        template.dilation,
        template.groups,
        bias=True,
        device=template.weight.device,
        dtype=template.weight.dtype,
    )
    with torch.no_grad():
        merged.weight.copy_(weight.to(template.weight.dtype))
        merged.bias.copy_(bias.to(template.weight.dtype))
    return merged
