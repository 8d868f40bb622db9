"""End-to-end Figure 1: model → one image → capture a layer → similarity → ghost pairs → figure."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn

from ._io import atomic_write
from .capture import LayerInfo, capture_maps, list_layers, single_entry
from .errors import GhostmapsError
from .images import NamedImage, load_images
from .models import LoadedModel, ModelInfo, as_loaded
from .pairs import GhostPairs, ghost_pairs
from .plots import figure1, save_figure
from .similarity import ChannelSimilarity, channel_similarity

ACTIVATIONS = {"ReLU", "ReLU6", "SiLU", "Hardswish", "GELU", "LeakyReLU", "Mish", "ELU", "PReLU"}
DEFAULT_IMAGE = "samples:chelsea"


def suggest_layer(layers: list[LayerInfo], min_size: int = 56) -> str:
    """An early layer with many channels, good for a Figure 1: among activation outputs (else conv outputs)
    whose maps are at least ``min_size`` pixels high, the one with the most channels (the earliest on ties)."""
    maps = [info for info in layers if len(info.shape) == 4 and info.shape[2] >= min_size]
    for kinds in (ACTIVATIONS, {"Conv2d"}):
        candidates = [info for info in maps if info.type in kinds]
        if candidates:
            best = max(info.shape[1] for info in candidates)
            return next(info.name for info in candidates if info.shape[1] == best)
    if not maps:
        raise GhostmapsError("the model has no 4-D feature maps of at least "
                             f"{min_size} pixels; pass a layer name explicitly.")
    return max(maps, key=lambda info: info.shape[1]).name


@dataclass
class Figure1Result:
    """Everything behind one Figure 1: the maps (C×H×W), their similarity, the chosen pairs and the figure."""

    model: ModelInfo
    layer: str
    image: str
    maps: torch.Tensor
    similarity: ChannelSimilarity
    pairs: GhostPairs
    figure: Figure

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "layer": self.layer,
            "image": self.image,
            "shape": list(self.maps.shape),
            "metric": self.similarity.metric,
            "dead_channels": torch.nonzero(self.similarity.dead).flatten().tolist(),
            "constant_channels": torch.nonzero(self.similarity.constant).flatten().tolist(),
            "pairs": [p.to_dict() for p in self.pairs],
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def save(self, path: str | os.PathLike, svg: bool = False) -> list[Path]:
        """Write the figure (PNG, plus SVG when asked) and a JSON of the pairs beside it."""
        written = save_figure(self.figure, path, svg=svg)
        json_path = written[0].with_suffix(".json")
        atomic_write(json_path, self.to_json(indent=2) + "\n")
        return [*written, json_path]


def run_figure1(
    model: LoadedModel | nn.Module,
    layer: str | None = None,
    image: str | os.PathLike | NamedImage = DEFAULT_IMAGE,
    k: int = 3,
    metric: str = "cosine",
    max_channels: int = 64,
    device: str | torch.device | None = None,
) -> Figure1Result:
    """Find the ``k`` strongest exclusive ghost pairs of ``layer`` on one image and draw them.

    Args:
        model: a ``load_model`` result (its preprocessing is used) or a bare ``nn.Module`` (ImageNet
            preprocessing).
        layer: the layer to show; default ``suggest_layer`` (an early layer with many channels).
        image: an image path, ``"samples:NAME"``, or a ``NamedImage``; the first readable image is used.
        k: number of pairs; metric: ``"cosine"`` or ``"pearson"``; max_channels: tiles shown.
    """
    net, preprocess, info = as_loaded(model)
    if not isinstance(image, NamedImage):
        image = next(iter(load_images(image, transform=preprocess)))
    if layer is None:
        layer = suggest_layer(list_layers(net, tuple(image.tensor.shape), device=device))
    maps = capture_maps(net, layer, image.tensor.unsqueeze(0), device=device)
    entry, batch = single_entry(maps, layer, ndim=4)
    fmap = batch[0]
    sim = channel_similarity(fmap, metric=metric, layer=entry)
    pairs = ghost_pairs(sim, k=k)
    title = f"{info.name} · {entry} · {image.name}  ({fmap.shape[0]}×{fmap.shape[1]}×{fmap.shape[2]}, {metric})"
    fig = figure1(fmap, pairs, max_channels=max_channels, title=title, image=image.tensor)
    return Figure1Result(info, entry, image.name, fmap, sim, pairs, fig)
