"""Helpers for the GhostNetV2/V3 tests: timm names per width, randomisation that keeps V3 outputs O(1),
MAC counting (FlopCounterMode, conv + linear; ghostnet tests never import analysis)."""

from __future__ import annotations

from collections import Counter

import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import ghostnet
from tests.helpers import randomize_

V2_WIDTHS = {1.0: "ghostnetv2_100", 1.3: "ghostnetv2_130", 1.6: "ghostnetv2_160"}
V3_WIDTHS = {0.5: "ghostnetv3_050", 1.0: "ghostnetv3_100", 1.3: "ghostnetv3_130", 1.6: "ghostnetv3_160"}


def randomize_rep_(model: nn.Module, seed: int = 0) -> nn.Module:
    """``randomize_``, then each re-parameterisable branch (a module path containing ``_rpr_``) scaled by
    1 / (branches summed with it), so the summed outputs stay O(1) through 16 blocks instead of growing
    about 4x per conv (works on timm's and our V3 names alike)."""
    randomize_(model, seed)
    bns = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and "_rpr_" in n]
    group_sizes = Counter(n.split("_rpr_")[0] for n, _ in bns)
    with torch.no_grad():
        for name, bn in bns:
            k = group_sizes[name.split("_rpr_")[0]]
            bn.weight /= k
            bn.bias /= k
    return model


def timm_reference(name: str, seed: int) -> nn.Module:
    """A randomly initialised timm model with random weights and BN statistics, in eval mode."""
    return randomize_rep_(timm.create_model(name, pretrained=False), seed).eval()


def ours(name: str, **kwargs) -> nn.Module:
    return getattr(ghostnet, name)(**kwargs)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, size: int = 224) -> float:
    """Multiply-adds of one eval forward at size x size: FlopCounterMode FLOPs / 2 (conv + linear)."""
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, size, size))
    return counter.get_total_flops() / 2


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()
