"""Every model name of ``ghostnet`` with its metadata, declared beside its constructor.

A constructor is registered with ``@register_model(...)``, which records what a consumer needs to use the
model without reading its code: the input size and normalisation it was trained with, the crop, and the
released weights' URL (``None``: no weights were released). ``analysis.data.models.load_model`` reads this
table; nothing here imports ``analysis``.

>>> import ghostnet
>>> cfg = ghostnet.registry.model_cfg("ghostnet_100")
>>> cfg.input_size, cfg.url is not None
((3, 224, 224), True)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from torch import nn

__all__ = ["CIFAR_MEAN", "CIFAR_STD", "IMAGENET_MEAN", "IMAGENET_STD", "RELEASES", "ModelCfg", "create_model", "list_models",
           "model_cfg", "register_model"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
#: The official GitHub releases of GhostNetV2 / V3 (the files timm's hub weights were made from).
RELEASES = "https://github.com/huawei-noah/Efficient-AI-Backbones/releases/download"


@dataclass(frozen=True)
class ModelCfg:
    """What a registered model expects and where its weights are.

    input_size: (C, H, W) it was trained at; mean/std: per-channel normalisation of [0, 1] RGB inputs;
    crop_pct: evaluation centre crop as a fraction of the resized short side (0.875: resize 256, crop 224);
    url: the released weights (fetched through the torch hub cache), or None; num_classes: the head's size;
    dataset: what it was trained (or is meant to be trained) on; paper: where the architecture comes from.
    """

    name: str
    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    url: str | None = None
    num_classes: int = 1000
    dataset: str = "imagenet-1k"
    paper: str = "GhostNet (Han et al., CVPR 2020)"

    @property
    def resize(self) -> int:
        """The short side an image is resized to before the centre crop."""
        return round(self.input_size[-1] / self.crop_pct)

    def to_dict(self) -> dict[str, Any]:
        """The metadata as plain data (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


_MODELS: dict[str, tuple[Callable[..., nn.Module], ModelCfg]] = {}
F = TypeVar("F", bound=Callable[..., nn.Module])


def register_model(**cfg: Any) -> Callable[[F], F]:
    """Decorator: register the constructor under its function name with the metadata ``cfg`` (the fields of
    :class:`ModelCfg` but ``name``). Registering a name twice is an error."""

    def wrap(fn: F) -> F:
        name = fn.__name__
        if name in _MODELS:
            raise ValueError(f"register_model: {name!r} is registered twice")
        _MODELS[name] = (fn, ModelCfg(name=name, **cfg))
        return fn

    return wrap


def _ensure_loaded() -> None:
    import ghostnet  # noqa: F401 - importing the package imports (and so registers) every model module


def list_models() -> list[str]:
    """Every registered model name, sorted."""
    _ensure_loaded()
    return sorted(_MODELS)


def _entry(name: str) -> tuple[Callable[..., nn.Module], ModelCfg]:
    _ensure_loaded()
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown ghostnet model {name!r}.{hint} Registered: {', '.join(sorted(_MODELS))}.")
    return _MODELS[name]


def model_cfg(name: str) -> ModelCfg:
    """The metadata of a registered model (``ValueError`` listing close names for an unknown one)."""
    return _entry(name)[1]


def create_model(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build a registered model by name; ``pretrained=True`` loads its released weights (where the
    constructor supports it), other keyword arguments go to the constructor."""
    fn, _ = _entry(name)
    return fn(pretrained=True, **kwargs) if pretrained else fn(**kwargs)
