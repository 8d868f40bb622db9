"""ghostmaps.ghostnet: GhostNet (Han et al., CVPR 2020), GhostNetV2/V3 and Ghost versions of classic networks.

This package never imports ``analysis`` (the dependency runs analysis -> ghostnet only).
"""

from .bottleneck import GhostBottleneck
from .fuse import fuse
from .ghostnet import GhostNet, ghostnet_050, ghostnet_100, ghostnet_130
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
from .layers import ConvBnAct, GhostConv, GhostModule, SqueezeExcite, make_divisible
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
    "GhostConv",
    "ConvBnAct",
    "make_divisible",
]

#: Conversion of pretrained networks moved to ``analysis.convert`` (``ghostnet`` never imports ``analysis``).
_MOVED = {"ghostify": "analysis.ghostify", "GhostifyResult": "analysis.GhostifyResult", "rebuild": "analysis.rebuild"}


def __getattr__(name: str) -> object:
    if name in _MOVED:
        raise AttributeError(f"ghostnet.{name} moved to {_MOVED[name]} (conversion of pretrained networks lives in "
                             f"analysis.convert; ghostnet holds the architectures and layers only)")
    raise AttributeError(f"module 'ghostnet' has no attribute {name!r}")
