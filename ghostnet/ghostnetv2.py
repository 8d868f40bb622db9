"""GhostNetV2 (Tang et al., NeurIPS 2022): GhostNet v1 plus DFC attention on the expansion Ghost module.

The network is v1's (same ``GHOSTNET_CFG`` stage table, widths, stem and head); what changes is ``ghost1`` of
every bottleneck but the first two, which becomes a ``GhostModuleV2``: its output is multiplied by a
"decoupled fully connected" attention map computed from the module input, at half resolution, by
avg-pool 2x2 -> 1x1 conv + BN -> depthwise 1x5 conv + BN -> depthwise 5x1 conv + BN, then nearest
upsampling and a sigmoid. State-dict keys are the official release's (identical to timm's
``ghostnetv2_*``): the attention branch is ``ghost1.short_conv.{0..5}``.

The attention map is a module output: ``ghost1.gate`` (an ``nn.Sigmoid``) returns the full-resolution map,
B x mid x H x W in (0, 1), that multiplies ``ghost1``'s output, so a forward hook on it captures the map.
(Upsampling before the sigmoid is exactly the official sigmoid-then-upsample: nearest upsampling only
copies values.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .bottleneck import GhostBottleneck
from .ghostnet import GHOSTNET_CFG, GhostNet
from .layers import GhostModule
from .registry import RELEASES, register_model

StageRow = tuple[int, int, int, float, int]  # (dw kernel k, exp, out, SE ratio, stride), as in GHOSTNET_CFG
ATTENTION_FROM = 2  # bottlenecks 0 and 1 keep the plain Ghost module (official: layer_id <= 1)


class GhostModuleV2(GhostModule):
    """A ``GhostModule`` whose output is gated by DFC attention (``attention=True``).

    Extra submodules: ``attn_pool`` (AvgPool2d 2x2), ``short_conv`` (the six-layer DFC branch, official
    names), ``gate`` (Sigmoid; its output is the attention map). With ``attention=False`` it is exactly a
    v1 ``GhostModule``. ``forward_parts`` returns the two halves of the (gated) output, as in v1
    ``cat(intrinsic, ghost) == forward(x)``; ``gated=False`` gives them before the gate (the maps the
    primary and cheap convs make, which forward hooks on ``primary_conv`` / ``cheap_operation`` also see).
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
        attention: bool = True,
        dfc_kernel: int = 5,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, ratio, dw_size, stride, relu)
        if dfc_kernel < 1 or dfc_kernel % 2 == 0:
            raise ValueError(f"GhostModuleV2: dfc_kernel must be odd, got {dfc_kernel}; GhostNetV2 uses 5.")
        self.attention = bool(attention)
        self.dfc_kernel = dfc_kernel
        if not self.attention:
            self.attn_pool = self.short_conv = self.gate = None
            return
        c, pad = out_channels, dfc_kernel // 2
        self.attn_pool = nn.AvgPool2d(2, 2)
        self.short_conv = nn.Sequential(
            nn.Conv2d(in_channels, c, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(c),
            nn.Conv2d(c, c, (1, dfc_kernel), 1, (0, pad), groups=c, bias=False),  # along the width
            nn.BatchNorm2d(c),
            nn.Conv2d(c, c, (dfc_kernel, 1), 1, (pad, 0), groups=c, bias=False),  # along the height
            nn.BatchNorm2d(c),
        )
        self.gate = nn.Sigmoid()

    def attention_map(self, x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
        """The DFC attention map for input ``x`` at spatial ``size``: B x out_channels x H x W in (0, 1)."""
        if self.short_conv is None:
            raise RuntimeError("GhostModuleV2: this module was built with attention=False.")
        logits = self.short_conv(self.attn_pool(x))
        return self.gate(F.interpolate(logits, size=size, mode="nearest"))

    # The ungated computation; GhostModuleV3 overrides these two with its multi-branch training form.
    def _ungated(self, x: torch.Tensor) -> torch.Tensor:
        return GhostModule.forward(self, x)

    def _ungated_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return GhostModule.forward_parts(self, x)

    def forward_parts(self, x: torch.Tensor, gated: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``(intrinsic, ghost)`` halves of the output (``gated=False``: before the attention gate)."""
        intrinsic, ghost = self._ungated_parts(x)
        if not (gated and self.attention):
            return intrinsic, ghost
        attn = self.attention_map(x, intrinsic.shape[-2:])
        split = intrinsic.shape[1]
        return intrinsic * attn[:, :split], ghost * attn[:, split:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._ungated(x)
        if not self.attention:
            return out
        return out * self.attention_map(x, out.shape[-2:])

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", attention=DFC({self.dfc_kernel})" if self.attention else "")


def replace_bottlenecks(
    model: GhostNet,
    cfg: list[list[StageRow]] | None,
    make: Callable[[int, StageRow, GhostBottleneck], nn.Module],
) -> None:
    """Swap each bottleneck of a built ``GhostNet`` for ``make(layer_index, stage_row, block)``.

    ``layer_index`` counts bottlenecks from 0 over the whole network (the official ``layer_id``) and
    ``stage_row`` is the block's row of the stage table, so V2/V3 reuse v1's construction and channel
    rounding and only say what differs.
    """
    rows = GHOSTNET_CFG if cfg is None else cfg
    layer = 0
    for stage_rows, stage in zip(rows, model.blocks[: len(rows)], strict=True):
        for j, row in enumerate(stage_rows):
            stage[j] = make(layer, tuple(row), stage[j])
            layer += 1


class GhostNetV2(GhostNet):
    """GhostNetV2 at a width multiplier (1.0 / 1.3 / 1.6 released): v1 with DFC attention in ``ghost1`` of
    every bottleneck from the third on. Same constructor arguments, ``feature_info`` and ``fuse()`` as v1.

    Inputs need H, W >= 33: the DFC pool of the last stage needs a 2x2 map at stride 32 (as in the
    official code and timm, which fail the same way on 32x32)."""

    checkpoint_hint = "ghostnetv2_100/130/160 for widths 1.0/1.3/1.6"

    def __init__(
        self,
        width: float = 1.0,
        num_classes: int = 1000,
        dropout: float = 0.2,
        in_chans: int = 3,
        cfg: list[list[StageRow]] | None = None,
    ) -> None:
        super().__init__(width=width, num_classes=num_classes, dropout=dropout, in_chans=in_chans, cfg=cfg)
        replace_bottlenecks(self, cfg, self._with_attention)

    @staticmethod
    def _with_attention(layer: int, row: StageRow, block: GhostBottleneck) -> GhostBottleneck:
        if layer >= ATTENTION_FROM:
            old = block.ghost1
            block.ghost1 = GhostModuleV2(old.in_channels, old.out_channels, relu=True, attention=True)
        return block


def build(cls: type[GhostNet], width: float, name: str, pretrained: bool, progress: bool, **kwargs: Any) -> GhostNet:
    """``cls(width=width, **kwargs)``, with the released weights for ``name`` when ``pretrained``."""
    model = cls(width=width, **kwargs)
    if pretrained:
        from .weights import load_pretrained

        load_pretrained(model, name, progress=progress)
    return model


@register_model(url=f"{RELEASES}/GhostNetV2/ck_ghostnetv2_10.pth.tar", paper="GhostNetV2 (Tang et al., NeurIPS 2022)")
def ghostnetv2_100(pretrained: bool = False, progress: bool = True, **kwargs: Any) -> GhostNetV2:
    """GhostNetV2 1.0x (6.16M params, 167.1M MACs). ``pretrained=True`` loads the official 75.3 % weights
    through the torch hub cache (downloading them when online)."""
    return build(GhostNetV2, 1.0, "ghostnetv2_100", pretrained, progress, **kwargs)


@register_model(url=f"{RELEASES}/GhostNetV2/ck_ghostnetv2_13.pth.tar", paper="GhostNetV2 (Tang et al., NeurIPS 2022)")
def ghostnetv2_130(pretrained: bool = False, progress: bool = True, **kwargs: Any) -> GhostNetV2:
    """GhostNetV2 1.3x (8.96M params, 269.3M MACs); ``pretrained=True``: the official 76.9 % weights."""
    return build(GhostNetV2, 1.3, "ghostnetv2_130", pretrained, progress, **kwargs)


@register_model(url=f"{RELEASES}/GhostNetV2/ck_ghostnetv2_16.pth.tar", paper="GhostNetV2 (Tang et al., NeurIPS 2022)")
def ghostnetv2_160(pretrained: bool = False, progress: bool = True, **kwargs: Any) -> GhostNetV2:
    """GhostNetV2 1.6x (12.39M params, 398.6M MACs); ``pretrained=True``: the official 77.8 % weights."""
    return build(GhostNetV2, 1.6, "ghostnetv2_160", pretrained, progress, **kwargs)
