"""timm's model zoo by name, for ``load_model("timm:<name>")``: the model from ``timm.create_model``, its
preprocessing from timm's own data config, pretrained weights through timm's usual cache (the Hugging Face
hub cache, or the torch hub cache for the few models timm still fetches by URL).

timm is an optional extra (``pip install 'ghostmaps[timm]'``); it is imported only when a ``timm:`` spec is
loaded. This module builds models and maps timm's failures to ``GhostmapsError``s; ``analysis.data.models``
seeds, wraps and places them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from analysis._core.errors import GhostmapsError, WeightsUnavailableError, did_you_mean

PREFIX = "timm:"
INSTALL_HINT = "pip install 'ghostmaps[timm]' (or: pip install timm)"


def is_timm_spec(spec: object) -> bool:
    """Whether ``spec`` names a timm model (``"timm:<name>"``)."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


def import_timm(spec: str) -> ModuleType:
    """The ``timm`` package, or a ``GhostmapsError`` saying how to install it."""
    try:
        import timm
    except ImportError as exc:
        raise GhostmapsError(f"model spec {spec!r} needs timm, which is not installed; install it with "
                             f"{INSTALL_HINT}, or pick a torchvision or ghostnet model.") from exc
    return timm


def split_spec(spec: str) -> str:
    """The timm model name of ``"timm:<name>"`` (``<name>`` may carry a pretrained tag, ``resnet18.a1_in1k``)."""
    name = spec[len(PREFIX):].strip()
    if not name:
        raise GhostmapsError(f"model spec {spec!r} names no timm model; write timm:<name>, e.g. timm:resnet18 "
                             "(timm.list_models() lists them).")
    return name


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache that timm downloads into (``HF_HUB_CACHE``, ``HF_HOME``/hub by default)."""
    try:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    except ImportError:  # timm without huggingface_hub fetches by URL only
        return Path(os.environ.get("HF_HUB_CACHE", Path.home() / ".cache" / "huggingface" / "hub"))


def _torch_hub_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def pretrained_cfg(timm: ModuleType, spec: str, name: str) -> Any:
    """timm's pretrained config for ``name`` (default tag when none is given); unknown names and tags raise
    a ``GhostmapsError`` listing close matches."""
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        raise GhostmapsError(f"unknown timm model {arch!r} in {spec!r}.{did_you_mean(arch, timm.list_models())} "
                             "timm.list_models('pattern*') lists timm's names.")
    try:
        return timm.models.get_pretrained_cfg(name)
    except RuntimeError as exc:  # "Invalid pretrained tag"
        tags = timm.list_pretrained(f"{arch}.*")
        raise GhostmapsError(f"{spec!r}: timm has no pretrained tag {tag!r} for {arch} ({exc}); available: "
                             f"{', '.join(tags) or 'none'}.{did_you_mean(name, tags)}") from None


def weights_id(cfg: Any) -> str:
    """Where timm's pretrained weights for ``cfg`` come from: ``hf-hub:<repo>`` or the URL."""
    if cfg is not None and getattr(cfg, "hf_hub_id", None):
        return f"hf-hub:{cfg.hf_hub_id}"
    return (getattr(cfg, "url", None) or "") if cfg is not None else ""


def cached_file(cfg: Any) -> str | None:
    """The file of ``cfg``'s weights in the Hugging Face (or torch hub) cache, if it is there."""
    if cfg is None:
        return None
    if getattr(cfg, "hf_hub_id", None):
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else []
        for filename in names + ["model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"]:
            found = try_to_load_from_cache(repo, filename, cache_dir=str(hf_cache_dir()), revision=revision or None)
            if isinstance(found, str):
                return found
    if getattr(cfg, "url", None):
        path = _torch_hub_dir() / os.path.basename(cfg.url)
        return str(path) if path.is_file() else None
    return None


def create(spec: str, pretrained: bool) -> tuple[nn.Module, str, str | None]:
    """Build ``timm:<name>``: ``(model, weights id, weights file)``. ``pretrained`` loads timm's weights from
    its cache or the network; offline without them, ``WeightsUnavailableError`` names the cache and the
    ways out."""
    timm = import_timm(spec)
    name = split_spec(spec)
    cfg = pretrained_cfg(timm, spec, name)
    if not pretrained:
        return timm.create_model(name, pretrained=False), "random", None
    source = weights_id(cfg)
    if not source and not getattr(cfg, "file", None):
        raise GhostmapsError(f"timm has no pretrained weights for {name!r} (tag {getattr(cfg, 'tag', None)!r}); "
                             "use weights=None (CLI: --weights none) for a random init, or a checkpoint path.")
    try:
        model = timm.create_model(name, pretrained=True)
    except (OSError, RuntimeError) as exc:  # LocalEntryNotFoundError, URLError, connection errors are OSErrors
        raise _unavailable(spec, name, cfg, exc) from exc
    except Exception as exc:
        if type(exc).__module__.startswith(("huggingface_hub", "httpx", "requests")):  # HTTP 401/404, timeouts
            raise _unavailable(spec, name, cfg, exc) from exc
        raise
    return model, source, cached_file(cfg)


def _offline_mode() -> bool:
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def _unavailable(spec: str, name: str, cfg: Any, exc: Exception) -> WeightsUnavailableError:
    hub = getattr(cfg, "hf_hub_id", None)
    looked = (f"the Hugging Face hub cache: {hf_cache_dir()} (repo {hub})" if hub
              else f"the torch hub cache: {_torch_hub_dir()}")
    offline = " (HF_HUB_OFFLINE is set)" if _offline_mode() else ""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return WeightsUnavailableError(
        f"pretrained weights for {spec} ({weights_id(cfg)}) are not in timm's cache and could not be downloaded"
        f"{offline} ({type(exc).__name__}: {reason}).\n  Looked in {looked}\n  Ways out: use weights=None "
        f"(CLI: --weights none) for a random init; pass a local checkpoint path as weights (a state dict of "
        f"timm.create_model({name!r}), e.g. torch.save(model.state_dict(), PATH)); or go online once so timm "
        "can cache them" + ("." if offline else " (offline, set HF_HUB_OFFLINE=1 to skip the network retries).")
    )


def preprocess(model: nn.Module) -> Callable[[Any], torch.Tensor]:
    """timm's evaluation transform for ``model`` (its data config: input size, interpolation, crop, mean/std)
    mapping a PIL image to a normalised tensor."""
    import timm.data

    config = timm.data.resolve_model_data_config(model)
    return timm.data.create_transform(**config, is_training=False)
