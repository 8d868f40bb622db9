"""ghostmaps.ghostnet: GhostNet (Han et al., CVPR 2020), GhostNetV2/V3 and Ghost versions of classic networks.

This package never imports ``analysis`` (the dependency runs analysis -> ghostnet only).
"""

from .bottleneck import GhostBottleneck, SqueezeExcite
from .convert import GhostConv, GhostifyResult, ghostify, rebuild
from .fuse import fuse
from .ghostnetv2 import GhostModuleV2, GhostNetV2, ghostnetv2_100, ghostnetv2_130, ghostnetv2_160
from .ghostnetv3 import (
    GhostBottleneckV3,
    GhostModuleV3,
    GhostNetV3,
    ghostnetv3_050,
    ghostnetv3_100,
    ghostnetv3_130,
    ghostnetv3_160,
)
from .model import GhostNet, ghostnet_050, ghostnet_100, ghostnet_130
from .module import GhostModule
from .variants import ghost_resnet50, ghost_resnet56, ghost_vgg16
from .weights import load_checkpoint

__all__ = [
    "GhostModule",
    "GhostBottleneck",
    "SqueezeExcite",
    "GhostNet",
    "ghostnet_050",
    "ghostnet_100",
    "ghostnet_130",
    "GhostModuleV2",
    "GhostNetV2",
    "ghostnetv2_100",
    "ghostnetv2_130",
    "ghostnetv2_160",
    "GhostModuleV3",
    "GhostBottleneckV3",
    "GhostNetV3",
    "ghostnetv3_050",
    "ghostnetv3_100",
    "ghostnetv3_130",
    "ghostnetv3_160",
    "ghost_vgg16",
    "ghost_resnet56",
    "ghost_resnet50",
    "fuse",
    "load_checkpoint",
    "ghostify",
    "GhostConv",
    "GhostifyResult",
    "rebuild",
]
