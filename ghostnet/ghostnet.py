"""GhostNet v1 (Han et al., CVPR 2020) with the official stage table and state-dict names.

Layout: ``conv_stem``/``bn1``/``act1`` (3x3 s2) -> ``blocks`` (10 stages: 16 Ghost bottlenecks and a final
1x1 ConvBnAct) -> ``global_pool`` -> ``conv_head`` (1x1, bias, 1280, not width-scaled) -> ``act2`` ->
dropout -> ``classifier``. Stage outputs are listed in ``GhostNet.feature_info``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .bottleneck import GhostBottleneck
from .layers import ConvBnAct, make_divisible
from .registry import register_model

# One list per ``blocks.i`` stage; each row is (dw kernel k, expansion/mid channels, out channels,
# SE ratio, stride) for one GhostBottleneck, before width scaling. Stage 9 (ConvBnAct 1x1 -> 960) follows.
GHOSTNET_CFG: list[list[tuple[int, int, int, float, int]]] = [
    [(3, 16, 16, 0, 1)],
    [(3, 48, 24, 0, 2)],
    [(3, 72, 24, 0, 1)],
    [(5, 72, 40, 0.25, 2)],
    [(5, 120, 40, 0.25, 1)],
    [(3, 240, 80, 0, 2)],
    [(3, 200, 80, 0, 1), (3, 184, 80, 0, 1), (3, 184, 80, 0, 1), (3, 480, 112, 0.25, 1), (3, 672, 112, 0.25, 1)],
    [(5, 672, 160, 0.25, 2)],
    [(5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1), (5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1)],
]
STEM_CHANNELS = 16
LAST_CHANNELS = 960
HEAD_CHANNELS = 1280


class GhostNet(nn.Module):
    """GhostNet at a width multiplier (0.5 / 1.0 / 1.3 in the paper).

    ``feature_info`` lists each stage output as ``dict(module=name, num_chs=C, reduction=stride)`` for the
    stem (``act1``, after BN+ReLU) and ``blocks.0`` ... ``blocks.9``; ``forward_stages`` returns them all.
    """

    def __init__(
        self,
        width: float = 1.0,
        num_classes: int = 1000,
        dropout: float = 0.2,
        in_chans: int = 3,
        cfg: list[list[tuple[int, int, int, float, int]]] | None = None,
    ) -> None:
        super().__init__()
        if not width > 0:
            raise ValueError(f"GhostNet: width must be > 0, got {width}; the paper uses 0.5, 1.0 or 1.3.")
        if num_classes < 0:
            raise ValueError(f"GhostNet: num_classes must be >= 0 (0 = no classifier), got {num_classes}.")
        if not 0 <= dropout < 1:
            raise ValueError(f"GhostNet: dropout must be in [0, 1), got {dropout}; the paper uses 0.2.")
        self.width = width
        self.num_classes = num_classes
        self.dropout = dropout
        cfg = GHOSTNET_CFG if cfg is None else cfg

        channels = make_divisible(STEM_CHANNELS * width, 4)
        self.conv_stem = nn.Conv2d(in_chans, channels, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.act1 = nn.ReLU(inplace=True)
        reduction = 2
        self.feature_info: list[dict[str, Any]] = [dict(module="act1", num_chs=channels, reduction=reduction)]

        stages: list[nn.Module] = []
        for rows in cfg:
            blocks = []
            for k, exp, out, se_ratio, stride in rows:
                out_channels = make_divisible(out * width, 4)
                mid_channels = make_divisible(exp * width, 4)
                blocks.append(GhostBottleneck(channels, mid_channels, out_channels, k, stride, se_ratio))
                channels = out_channels
                reduction *= stride
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(module=f"blocks.{len(stages) - 1}", num_chs=channels, reduction=reduction))
        last = make_divisible(LAST_CHANNELS * width, 4)
        stages.append(nn.Sequential(ConvBnAct(channels, last, 1)))
        self.feature_info.append(dict(module=f"blocks.{len(stages) - 1}", num_chs=last, reduction=reduction))
        self.blocks = nn.Sequential(*stages)
        self.num_features = last

        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_head = nn.Conv2d(last, HEAD_CHANNELS, 1, bias=True)
        self.act2 = nn.ReLU(inplace=True)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes) if num_classes > 0 else nn.Identity()

    @property
    def stage_names(self) -> list[str]:
        """Module names of the stage outputs, in order (see ``feature_info``)."""
        return [info["module"] for info in self.feature_info]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and all stages: the B x (960*width) x H/32 x W/32 map before pooling."""
        return self.blocks(self.act1(self.bn1(self.conv_stem(x))))

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every stage output keyed by its ``stage_names`` entry (stem ``act1``, ``blocks.0`` ...)."""
        x = self.act1(self.bn1(self.conv_stem(x)))
        outs = {"act1": x}
        for i, stage in enumerate(self.blocks):
            x = stage(x)
            outs[f"blocks.{i}"] = x
        return outs

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Pool, 1x1 conv_head + ReLU, dropout (training only), classifier."""
        x = self.flatten(self.act2(self.conv_head(self.global_pool(x))))
        if self.dropout > 0.0:
            x = F.dropout(x, p=self.dropout, training=self.training)
        return self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def fuse(self) -> GhostNet:
        """A new inference model with every BatchNorm folded into its conv (see ``ghostnet.fuse``)."""
        from .fuse import fuse

        return fuse(self)


def _ghostnet(width: float, name: str, pretrained: bool, progress: bool, **kwargs: Any) -> GhostNet:
    model = GhostNet(width=width, **kwargs)
    if pretrained:
        from .weights import load_pretrained

        load_pretrained(model, name, progress=progress)
    return model


@register_model()
def ghostnet_050(pretrained: bool = False, progress: bool = True, **kwargs: Any) -> GhostNet:
    """GhostNet 0.5x (2.59M params, 42.3M MACs). No weights were released: ``pretrained=True`` raises."""
    return _ghostnet(0.5, "ghostnet_050", pretrained, progress, **kwargs)


@register_model(url="https://github.com/huawei-noah/ghostnet/raw/master/ghostnet_pytorch/models/state_dict_73.98.pth")  # official hub entry (hubconf.ghostnet_1x), top-1 73.98 %
def ghostnet_100(pretrained: bool = False, progress: bool = True, **kwargs: Any) -> GhostNet:
    """GhostNet 1.0x (5.18M params, 141.2M MACs). ``pretrained=True`` loads the official 73.98 % weights
    through the torch hub cache (downloading them when online)."""
    return _ghostnet(1.0, "ghostnet_100", pretrained, progress, **kwargs)


@register_model()
def ghostnet_130(pretrained: bool = False, progress: bool = True, **kwargs: Any) -> GhostNet:
    """GhostNet 1.3x (7.36M params, 227.0M MACs). No weights were released: ``pretrained=True`` raises."""
    return _ghostnet(1.3, "ghostnet_130", pretrained, progress, **kwargs)
