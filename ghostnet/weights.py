"""Checkpoints: load the official GhostNet release and timm's ``ghostnet_*`` weights into our models.

Our state-dict keys are the official ones, so loading is ``strict=True`` after unwrapping the usual
containers (``state_dict`` / ``model`` / ``state_dict_ema`` / ``model_ema``), ``module.`` prefixes
(DataParallel, timm's EMA wrapper) and ``_orig_mod.`` (torch.compile), dropping thop's
``total_ops`` / ``total_params`` buffers, and renaming timm's GhostNetV3 branch norms (``bn1`` below a
``*_rpr_*`` module) to the official ``bn``.
"""

from __future__ import annotations

import argparse
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

# Training checkpoints (timm's train.py, which the V2/V3 releases used) also pickle the argparse
# Namespace of the run; it is allowed through torch.load(weights_only=True), nothing else is.
_SAFE_GLOBALS = [argparse.Namespace]
_CONTAINER_KEYS = ("state_dict", "model", "net", "params")
_EMA_KEYS = ("state_dict_ema", "model_ema", "ema")
_PREFIXES = ("module.", "_orig_mod.")
_PROFILER_SUFFIXES = ("total_ops", "total_params")


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not fit the model (wrong width or architecture)."""


class PretrainedWeightsUnavailable(RuntimeError):
    """Pretrained weights could not be found in the hub cache nor downloaded."""


def _official_key(key: str) -> str:
    """timm's GhostNetV3 key -> the official one: the norm of a re-parameterisable branch
    (``...primary_rpr_conv.0.bn1.weight``, ``...dw_rpr_scale.bn1.bias``) is ``bn`` there. Keys without a
    ``*_rpr_*`` segment (v1, V2, v3's ``blocks.9.0.bn1``) are unchanged."""
    parts = key.split(".")
    for i, part in enumerate(parts):
        if "_rpr_" in part:
            parts[i + 1 :] = ["bn" if p == "bn1" else p for p in parts[i + 1 :]]
            break
    return ".".join(parts)


def _torch_load(load: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a ``torch.load``-based loader with ``weights_only=True``, turning a refused pickle into a
    clear error."""
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return load(*args, weights_only=True, **kwargs)
    except pickle.UnpicklingError as err:
        raise CheckpointMismatchError(
            f"load_checkpoint: the checkpoint holds objects torch.load(weights_only=True) refuses ({err}). "
            "If you trust the file, load it yourself with torch.load(path, weights_only=False) and pass the "
            "result to ghostnet.load_checkpoint."
        ) from None


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def extract_state_dict(checkpoint: Any, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """Unwrap a checkpoint object into a plain ``{key: tensor}`` dict with our (official) key names.

    ``use_ema`` picks the EMA copy (``state_dict_ema`` / ``model_ema``) when the file has one.
    """
    obj = checkpoint
    for _ in range(4):  # containers can nest, e.g. {"model": {"state_dict": ...}}
        if _is_tensor_dict(obj) or not isinstance(obj, Mapping):
            break
        order = (_EMA_KEYS + _CONTAINER_KEYS) if use_ema else (_CONTAINER_KEYS + _EMA_KEYS)
        key = next((k for k in order if k in obj and obj[k] is not None), None)
        if key is None:
            break
        obj = obj[key]
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not _is_tensor_dict(obj):
        found = sorted(map(str, obj))[:10] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointMismatchError(
            f"load_checkpoint: no state dict found in the checkpoint (top level: {found}); pass a state dict "
            f"or a file holding one under one of {_CONTAINER_KEYS + _EMA_KEYS}."
        )
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if key.rsplit(".", 1)[-1] in _PROFILER_SUFFIXES:
            continue
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[_official_key(key)] = value
    return out


def _describe_mismatch(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> str | None:
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        (k, tuple(state_dict[k].shape), tuple(own[k].shape))
        for k in own
        if k in state_dict and state_dict[k].shape != own[k].shape
    ]
    if not (missing or unexpected or mismatched):
        return None

    def listing(items: list, limit: int = 8) -> str:
        text = ", ".join(map(str, items[:limit]))
        return text + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")

    name = type(model).__name__ + (f"(width={model.width})" if hasattr(model, "width") else "")
    lines = [f"checkpoint does not fit {name}:"]
    if missing:
        lines.append(f"  {len(missing)} missing keys: {listing(missing)}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected keys: {listing(unexpected)}")
    if mismatched:
        lines.append(
            f"  {len(mismatched)} shape mismatches (key, checkpoint shape, model shape): {listing(mismatched)}"
        )
    hint = getattr(model, "checkpoint_hint", "ghostnet_050/100/130 for widths 0.5/1.0/1.3")
    lines.append(
        f"  Build the model that matches the checkpoint (e.g. {hint}; "
        "num_classes as in the checkpoint), or pass strict=False to load only the keys that fit."
    )
    return "\n".join(lines)


def load_checkpoint(
    model: nn.Module,
    path_or_state_dict: str | os.PathLike | Mapping[str, Any],
    strict: bool = True,
    use_ema: bool = False,
) -> nn.Module:
    """Load an official or timm GhostNet checkpoint (file path or already-loaded object) into ``model``.

    Raises ``CheckpointMismatchError`` listing missing / unexpected / shape-mismatched keys when the
    checkpoint is for another width or architecture (with ``strict=False``: loads the keys whose shapes
    fit and ignores the rest). Returns ``model``.
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        path = Path(path_or_state_dict)
        if not path.is_file():
            raise FileNotFoundError(f"load_checkpoint: no checkpoint file at {path}; check the path.")
        checkpoint = _torch_load(torch.load, path, map_location="cpu")
    else:
        checkpoint = path_or_state_dict
    state_dict = extract_state_dict(checkpoint, use_ema=use_ema)
    problem = _describe_mismatch(model, state_dict)
    if problem is not None:
        if strict:
            raise CheckpointMismatchError(problem)
        own = model.state_dict()
        state_dict = {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(state_dict, strict=False)
    return model


def load_pretrained(model: nn.Module, name: str, progress: bool = True) -> nn.Module:
    """Load the released weights for ``name`` through the torch hub cache (downloading when online).

    Offline or unreachable: ``PretrainedWeightsUnavailable`` naming the model, the cache folder and the
    ways out, instead of a urllib traceback.
    """
    from .registry import list_models, model_cfg

    url = model_cfg(name).url
    if url is None:
        released = ", ".join(n for n in list_models() if model_cfg(n).url)
        raise ValueError(
            f"{name}: no pretrained weights were released for this width (released: {released}). "
            f"Use pretrained=False, or load your own checkpoint with ghostnet.load_checkpoint(model, path)."
        )
    cache_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    try:
        state_dict = _torch_load(
            torch.hub.load_state_dict_from_url, url, model_dir=cache_dir, map_location="cpu", progress=progress
        )
    except OSError as err:  # URLError, HTTPError, timeouts and connection errors are all OSErrors
        raise PretrainedWeightsUnavailable(
            f"{name}: pretrained weights are not in the torch hub cache ({cache_dir}) and could not be "
            f"downloaded from {url} ({type(err).__name__}: {err}). Ways out: build the model with "
            f"pretrained=False; or get the file '{os.path.basename(url)}' elsewhere and call "
            f"ghostnet.load_checkpoint(model, local_path) (or copy it into {cache_dir}); or go online and retry."
        ) from None
    return load_checkpoint(model, state_dict)
