"""Rebuilding a ghostified model: the architecture from a spec, and a ``ghostmaps ghostify --out`` folder
loaded back whole."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from analysis._core.errors import GhostmapsError, did_you_mean
from analysis.convert.ghostify import GhostifyError, _set_submodule
from analysis.data.models import load_model
from ghostnet.layers import GhostConv

__all__ = ["GHOSTIFY_JSON", "STATE_FILE", "load_ghostified", "rebuild"]

GHOSTIFY_JSON = "ghostify.json"
STATE_FILE = "model_state.pt"


def rebuild(model: nn.Module, spec: dict[str, Any]) -> nn.Module:
    """The ghostified architecture of ``model`` from ``GhostifyResult.spec()`` (a copy; random GhostConv
    weights), ready for ``load_state_dict`` of the saved ghostified model."""
    if not isinstance(spec, dict) or "layers" not in spec:
        raise GhostifyError("spec must be GhostifyResult.spec() (a dict with 'layers'), e.g. json.load of the "
                            "ghostify.json the CLI writes, taking its 'spec' entry")
    new = copy.deepcopy(model)
    modules = dict(new.named_modules())
    for name, cfg in spec["layers"].items():
        old = modules.get(name)
        if not isinstance(old, nn.Conv2d):
            raise GhostifyError(f"spec layer {name!r} is not a Conv2d of this model; rebuild from the same "
                                f"architecture that was ghostified.{did_you_mean(name, modules)}")
        ghost = GhostConv.from_config(cfg).to(device=old.weight.device, dtype=old.weight.dtype)
        _set_submodule(new, name, ghost)
    return new


def load_ghostified(out_dir: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild and load a model written by ``ghostmaps ghostify --out DIR``: the original architecture
    (randomly initialised, from the model spec recorded in ``ghostify.json``), ghostified by the recorded
    spec, then the saved state dict."""
    out = Path(out_dir)
    meta_path, state_path = out / GHOSTIFY_JSON, out / STATE_FILE
    if not meta_path.is_file() or not state_path.is_file():
        raise GhostmapsError(f"{out} does not hold {GHOSTIFY_JSON} and {STATE_FILE}; pass the --out folder of "
                             "`ghostmaps ghostify`")
    meta = json.loads(meta_path.read_text())
    base = load_model(meta["model"]["name"], weights=None, device=device).model
    model = rebuild(base, meta["result"]["spec"])  # a GhostifyError is a GhostmapsError
    model.load_state_dict(torch.load(state_path, map_location=device, weights_only=True))
    return model.eval()
