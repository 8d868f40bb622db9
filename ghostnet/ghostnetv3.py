"""GhostNetV3 (arXiv 2404.11202, 2024): GhostNetV2 trained with re-parameterisable branches.

At deploy time GhostNetV3 *is* GhostNetV2 (same layers, same MACs). For training every conv of a Ghost
module and every stride-2 depthwise conv becomes several parallel conv + BN branches:

- primary (1x1) conv: ``num_branches`` conv + BN branches (``primary_rpr_conv``);
- cheap depthwise conv: ``num_branches`` d x d branches (``cheap_rpr_conv``), a 1x1 depthwise "scale"
  branch (``cheap_rpr_scale``) and a BN-only identity branch (``cheap_rpr_skip``, when ratio = 2);
- stride-2 depthwise conv of the bottleneck: ``num_branches`` k x k branches (``dw_rpr_conv``) and a 1x1
  stride-2 scale branch (``dw_rpr_scale``).

``reparameterize()`` folds each group of branches into one conv with a bias, in place; the result has the
state-dict layout of timm's deployed ``ghostnetv3_*`` (``primary_conv.0``, ``cheap_operation.0``,
``conv_dw``). Training-form keys are the official release's (branch norms are named ``bn``; timm names
them ``bn1``, which ``load_checkpoint`` maps). ``ghostnet.fuse`` re-parameterises first, then folds the
remaining BatchNorms (stem, DFC branch, shortcuts, head).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from .bottleneck import GhostBottleneck
from .ghostnet import GhostNet
from .ghostnetv2 import ATTENTION_FROM, GhostModuleV2, StageRow, build, replace_bottlenecks
from .registry import RELEASES, register_model
from .reparam import ConvBn, merge_branches


class GhostModuleV3(GhostModuleV2):
    """A ``GhostModuleV2`` (DFC attention optional) whose primary and cheap convs are re-parameterisable.

    Training form: ``primary_conv`` / ``cheap_operation`` are ``None`` and the branches above compute the
    two halves; ``primary_act`` / ``cheap_act`` (ReLU, or Identity when ``relu=False``) output them, so
    forward hooks there see the intrinsic and ghost maps. After ``reparameterize()`` the module is a v1/V2
    Ghost module with biased convs: ``primary_conv = Sequential(0: Conv2d[, 2: ReLU])``, likewise
    ``cheap_operation`` (the layout ``ghostnet.fuse`` gives a v1 module).
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
        attention: bool = False,
        num_branches: int = 3,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, ratio, dw_size, stride, relu, attention)
        if num_branches < 1:
            raise ValueError(f"GhostModuleV3: num_branches must be >= 1, got {num_branches}; GhostNetV3 uses 3.")
        self.num_branches = num_branches
        init, new = self.init_channels, self.new_channels
        self.primary_conv = None  # built by reparameterize()
        self.cheap_operation = None
        self.primary_rpr_conv = nn.ModuleList(
            ConvBn(in_channels, init, kernel_size, stride) for _ in range(num_branches)
        )
        self.primary_act = nn.ReLU(inplace=True) if relu else nn.Identity()
        self.cheap_rpr_skip = nn.BatchNorm2d(init) if new == init else None
        self.cheap_rpr_conv = nn.ModuleList(ConvBn(init, new, dw_size, groups=init) for _ in range(num_branches))
        self.cheap_rpr_scale = ConvBn(init, new, 1, groups=init) if dw_size > 1 else None
        self.cheap_act = nn.ReLU(inplace=True) if relu else nn.Identity()

    @property
    def deployed(self) -> bool:
        """True once ``reparameterize()`` has folded the branches."""
        return self.primary_rpr_conv is None

    def _branch_halves(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training form: (intrinsic, ghost) maps before the cut to ``out_channels``."""
        intrinsic = self.primary_rpr_conv[0](x)
        for branch in self.primary_rpr_conv[1:]:
            intrinsic = intrinsic + branch(x)
        intrinsic = self.primary_act(intrinsic)
        ghost = self.cheap_rpr_conv[0](intrinsic)
        for branch in self.cheap_rpr_conv[1:]:
            ghost = ghost + branch(intrinsic)
        if self.cheap_rpr_scale is not None:
            ghost = ghost + self.cheap_rpr_scale(intrinsic)
        if self.cheap_rpr_skip is not None:
            ghost = ghost + self.cheap_rpr_skip(intrinsic)
        return intrinsic, self.cheap_act(ghost)

    def _ungated(self, x: torch.Tensor) -> torch.Tensor:
        if self.deployed:
            return super()._ungated(x)
        out = torch.cat(self._branch_halves(x), dim=1)
        if self.init_channels + self.new_channels != self.out_channels:
            out = out[:, : self.out_channels]
        return out

    def _ungated_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.deployed:
            return super()._ungated_parts(x)
        intrinsic, ghost = self._branch_halves(x)
        return intrinsic, ghost[:, : self.out_channels - self.init_channels]

    @torch.no_grad()
    def reparameterize(self) -> GhostModuleV3:
        """Fold the branches into ``primary_conv`` / ``cheap_operation`` (in place; eval-mode BN statistics).
        Calling it again does nothing."""
        if self.deployed:
            return self
        primary = merge_branches(list(self.primary_rpr_conv))
        cheap_branches = list(self.cheap_rpr_conv) + ([self.cheap_rpr_scale] if self.cheap_rpr_scale is not None else [])
        cheap = merge_branches(cheap_branches, skip=self.cheap_rpr_skip)

        def with_act(conv: nn.Conv2d) -> nn.Sequential:
            layers = [("0", conv)] + ([("2", nn.ReLU(inplace=True))] if self.use_relu else [])
            return nn.Sequential(OrderedDict(layers))

        self.primary_conv, self.cheap_operation = with_act(primary), with_act(cheap)
        self.primary_rpr_conv = self.primary_act = None
        self.cheap_rpr_conv = self.cheap_rpr_scale = self.cheap_rpr_skip = self.cheap_act = None
        return self

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.deployed else f", branches={self.num_branches}")


class GhostBottleneckV3(GhostBottleneck):
    """A ``GhostBottleneck`` with ``GhostModuleV3`` expansion/projection (DFC attention on ``ghost1`` when
    ``attention``) and, for stride 2, a re-parameterisable depthwise conv (``dw_rpr_conv`` +
    ``dw_rpr_scale``, folded into ``conv_dw`` with a bias by ``reparameterize()``). SE and shortcut are v1's.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        dw_kernel_size: int = 3,
        stride: int = 1,
        se_ratio: float = 0.0,
        attention: bool = False,
        num_branches: int = 3,
    ) -> None:
        super().__init__(in_channels, mid_channels, out_channels, dw_kernel_size, stride, se_ratio)
        self.ghost1 = GhostModuleV3(in_channels, mid_channels, relu=True, attention=attention, num_branches=num_branches)
        self.ghost2 = GhostModuleV3(mid_channels, out_channels, relu=False, num_branches=num_branches)
        self.dw_rpr_conv = self.dw_rpr_scale = None
        if stride > 1:
            self.conv_dw = self.bn_dw = None  # built by reparameterize()
            self.dw_rpr_conv = nn.ModuleList(
                ConvBn(mid_channels, mid_channels, dw_kernel_size, stride, groups=mid_channels)
                for _ in range(num_branches)
            )
            self.dw_rpr_scale = ConvBn(mid_channels, mid_channels, 1, stride, groups=mid_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dw_rpr_conv is None:  # stride 1, or re-parameterised: v1's forward
            return super().forward(x)
        y = self.ghost1(x)
        z = self.dw_rpr_scale(y)
        for branch in self.dw_rpr_conv:
            z = z + branch(y)
        if self.se is not None:
            z = self.se(z)
        return self.ghost2(z) + self.shortcut(x)

    @torch.no_grad()
    def reparameterize(self) -> GhostBottleneckV3:
        """Fold every branch of the block (both Ghost modules and the depthwise conv), in place."""
        self.ghost1.reparameterize()
        self.ghost2.reparameterize()
        if self.dw_rpr_conv is not None:
            self.conv_dw = merge_branches(list(self.dw_rpr_conv) + [self.dw_rpr_scale])
            self.bn_dw = nn.Identity()
            self.dw_rpr_conv = self.dw_rpr_scale = None
        return self


class GhostNetV3(GhostNet):
    """GhostNetV3 at a width multiplier (0.5 / 1.0 / 1.3 / 1.6): GhostNetV2 whose bottlenecks are
    ``GhostBottleneckV3`` (DFC attention from the third on). ``deploy=True`` builds the re-parameterised
    form directly (to load a deployed checkpoint); otherwise call ``reparameterize()`` after training or
    loading, or ``fuse()`` for a new, fully folded copy."""

    def __init__(
        self,
        width: float = 1.0,
        num_classes: int = 1000,
        dropout: float = 0.2,
        in_chans: int = 3,
        cfg: list[list[StageRow]] | None = None,
        num_branches: int = 3,
        deploy: bool = False,
    ) -> None:
        super().__init__(width=width, num_classes=num_classes, dropout=dropout, in_chans=in_chans, cfg=cfg)

        def to_v3(layer: int, row: StageRow, block: GhostBottleneck) -> GhostBottleneckV3:
            k, _exp, _out, se_ratio, stride = row
            g1, g2 = block.ghost1, block.ghost2
            attention = layer >= ATTENTION_FROM
            return GhostBottleneckV3(
                g1.in_channels, g1.out_channels, g2.out_channels, k, stride, se_ratio, attention, num_branches
            )

        replace_bottlenecks(self, cfg, to_v3)
        if deploy:
            self.reparameterize()

    @property
    def deployed(self) -> bool:
        """True when every block is re-parameterised."""
        return all(m.deployed for m in self.modules() if isinstance(m, GhostModuleV3))

    @property
    def checkpoint_hint(self) -> str:
        form = "deploy (re-parameterised)" if self.deployed else "training (multi-branch)"
        return (
            "ghostnetv3_050/100/130/160 for widths 0.5/1.0/1.3/1.6; this model is in " + form + " form: "
            "load training-form checkpoints before reparameterize(), deployed ones into GhostNetV3(deploy=True)"
        )

    @torch.no_grad()
    def reparameterize(self) -> GhostNetV3:
        """Fold every re-parameterisable branch, in place (like timm's ``convert_to_deploy``). Uses the BN
        running statistics, so the result computes the eval-mode function. Returns ``self``."""
        for module in list(self.modules()):
            if isinstance(module, GhostBottleneckV3):
                module.reparameterize()
        return self


def _ghostnetv3(width: float, name: str, pretrained: bool, progress: bool, **kwargs: Any) -> GhostNetV3:
    deploy = kwargs.pop("deploy", False)
    model = build(GhostNetV3, width, name, pretrained, progress, **kwargs)  # released weights: training form
    return model.reparameterize() if deploy else model


@register_model(paper="GhostNetV3 (arXiv 2404.11202)")
def ghostnetv3_050(pretrained: bool = False, progress: bool = True, **kwargs: Any) -> GhostNetV3:
    """GhostNetV3 0.5x (3.40M params training / 2.85M deployed; 49.6M MACs deployed). No released weights."""
    return _ghostnetv3(0.5, "ghostnetv3_050", pretrained, progress, **kwargs)


@register_model(url=f"{RELEASES}/GhostNetV3/ghostnetv3-1.0.pth.tar", paper="GhostNetV3 (arXiv 2404.11202)")
def ghostnetv3_100(pretrained: bool = False, progress: bool = True, **kwargs: Any) -> GhostNetV3:
    """GhostNetV3 1.0x (8.13M / 6.15M params; 167.1M MACs deployed). ``pretrained=True`` loads the official
    weights (77.1 % EMA / 76.9 % plain; the plain ``state_dict`` is loaded, as timm does)."""
    return _ghostnetv3(1.0, "ghostnetv3_100", pretrained, progress, **kwargs)


@register_model(paper="GhostNetV3 (arXiv 2404.11202)")
def ghostnetv3_130(pretrained: bool = False, progress: bool = True, **kwargs: Any) -> GhostNetV3:
    """GhostNetV3 1.3x (12.22M / 8.95M params; 269.3M MACs deployed). No released weights."""
    return _ghostnetv3(1.3, "ghostnetv3_130", pretrained, progress, **kwargs)


@register_model(paper="GhostNetV3 (arXiv 2404.11202)")
def ghostnetv3_160(pretrained: bool = False, progress: bool = True, **kwargs: Any) -> GhostNetV3:
    """GhostNetV3 1.6x (17.28M / 12.38M params; 398.6M MACs deployed). No released weights."""
    return _ghostnetv3(1.6, "ghostnetv3_160", pretrained, progress, **kwargs)
