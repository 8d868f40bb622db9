"""End-to-end Figure 1: model → one image → capture a layer → similarity → ghost pairs → figure."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from matplotlib.figure import Figure
from torch import nn

from analysis._core.errors import GhostmapsError
from analysis._core.io import atomic_write
from analysis._core.results import Result, floats, plain
from analysis.data.batches import as_images
from analysis.data.images import NamedImage
from analysis.data.models import LoadedModel, ModelInfo, as_loaded
from analysis.hooks import LayerInfo, capture_maps, list_layers, single_entry
from analysis.measure.pairs import GhostPairs, ghost_pairs
from analysis.measure.similarity import DEFAULT_METRIC, ChannelSimilarity, channel_similarity
from analysis.plots import figure1, pair_gallery, save_figure

if TYPE_CHECKING:
    from typing_extensions import Self

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


def _title(model: str, layer: str, image: str, shape: tuple[int, ...], metric: str) -> str:
    return f"{model} · {layer} · {image}  ({shape[0]}×{shape[1]}×{shape[2]}, {metric})"


@dataclass(eq=False)
class Figure1Result(Result):
    """Everything behind one Figure 1: the maps (C×H×W), their similarity, the chosen pairs and the figure.

    ``rows()``: one per pair. ``to_dict()``: the ``summary()`` (what ``save`` writes beside the figure) plus the
    maps and the similarity; ``from_dict`` redraws the figure from them (without the input-image panel, which
    is not kept). Equality compares ``to_dict()``.
    """

    model: ModelInfo
    layer: str
    image: str
    maps: torch.Tensor
    similarity: ChannelSimilarity
    pairs: GhostPairs
    figure: Figure

    _COLUMNS = ("image", "layer", "rank", "i", "j", "score")

    def rows(self) -> list[dict[str, Any]]:
        return [{"image": self.image, **row} for row in self.pairs.rows()]

    def summary(self) -> dict[str, Any]:
        """Model, layer, image, shape, metric, dead and constant channels and the pairs (no maps)."""
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

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "exclusive": self.pairs.exclusive, "maps": plain(self.maps),
                "similarity": self.similarity.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        info = ModelInfo.from_dict(data["model"])
        maps = torch.from_numpy(floats(data["maps"]).reshape(data["shape"]))
        sim = ChannelSimilarity.from_dict(data["similarity"])
        pairs = GhostPairs.from_dict({"pairs": data["pairs"], "metric": sim.metric, "layer": sim.layer,
                                      "exclusive": data.get("exclusive", True)})
        title = _title(info.name, data["layer"], data["image"], tuple(maps.shape), sim.metric)
        return cls(info, data["layer"], data["image"], maps, sim, pairs, figure1(maps, pairs, title=title))

    def save(self, path: str | os.PathLike, svg: bool = False) -> list[Path]:
        """Write the figure (PNG, plus SVG when asked) and a JSON of the ``summary()`` beside it."""
        written = save_figure(self.figure, path, svg=svg)
        json_path = written[0].with_suffix(".json")
        atomic_write(json_path, json.dumps(self.summary(), indent=2) + "\n")
        return [*written, json_path]


def run_figure1(
    model: LoadedModel | nn.Module,
    layer: str | None = None,
    image: Any = DEFAULT_IMAGE,
    k: int = 3,
    metric: str = DEFAULT_METRIC,
    max_channels: int = 64,
    device: str | torch.device | None = None,
) -> Figure1Result:
    """Find the ``k`` strongest exclusive ghost pairs of ``layer`` on one image and draw them.

    Args:
        model: a ``load_model`` result (its preprocessing is used) or a bare ``nn.Module`` (ImageNet
            preprocessing).
        layer: the layer to show; default ``suggest_layer`` (an early layer with many channels).
        image: any image source of ``analysis.data.batches`` (an image path, ``"samples:NAME"``, a
            ``NamedImage``, a C×H×W or N×C×H×W tensor, a Dataset, ...); its first readable image is used.
        k: number of pairs; metric: ``"pearson"`` (default: invariant to the per-channel scale and offset the
            next BN removes) or ``"cosine"`` (biased upwards for non-negative maps); max_channels: tiles shown.
            Pairs of channels that are zero on most positions (APoZ ≥ 0.8) are flagged ``sparse`` in the legend.
    """
    net, preprocess, info = as_loaded(model)
    name, tensor = as_images(image, preprocess, name="image").first()  # the first readable one
    image = NamedImage(name, tensor, name)
    if layer is None:
        layer = suggest_layer(list_layers(net, tuple(image.tensor.shape), device=device))
    maps = capture_maps(net, layer, image.tensor.unsqueeze(0), device=device)
    entry, batch = single_entry(maps, layer, ndim=4)
    fmap = batch[0]
    sim = channel_similarity(fmap, metric=metric, layer=entry)
    pairs = ghost_pairs(sim, k=k)
    title = _title(info.name, entry, image.name, tuple(fmap.shape), metric)
    fig = figure1(fmap, pairs, max_channels=max_channels, title=title, image=image.tensor)
    return Figure1Result(info, entry, image.name, fmap, sim, pairs, fig)


HEADLINE_SCORE = "mean_sq_similarity"


def headline(survey: Any) -> tuple[str, str]:
    """The layer to show first and why: the largest excess of the mean squared similarity over the untrained
    baseline whose interval lies above 0 (over the noise-matched null when the survey has no untrained
    baseline); when no layer's interval is above 0, the largest excess, said to be not significant."""
    base = "untrained" if any(layer.redundancy.scores[HEADLINE_SCORE].untrained is not None for layer in survey) \
        else "null"

    def excess(layer: Any) -> tuple[float, float | None]:
        b = getattr(layer.redundancy.scores[HEADLINE_SCORE], base)
        return (b.excess if b is not None and b.excess is not None else float("-inf")), \
            (None if b is None else b.low)

    ranked = sorted(survey, key=lambda layer: -excess(layer)[0])
    what = "the untrained network" if base == "untrained" else "the noise-matched null"
    for layer in ranked:
        value, low = excess(layer)
        if low is not None and low > 0:
            return layer.name, (f"{layer.name}: mean squared similarity {value:+.4f} above {what}, its "
                                f"{int(100 * layer.redundancy.level)}% interval above 0 (largest such excess)")
    top = ranked[0]
    if excess(top)[1] is None:
        return top.name, (f"no interval to judge by (no image groups: groups=1, a compact file or too few "
                          f"images); the largest excess of the mean squared similarity over {what} is {top.name} "
                          f"({excess(top)[0]:+.4f}), not shown to be significant")
    return top.name, (f"no layer's mean squared similarity is significantly above {what}; the largest excess is "
                      f"{top.name} ({excess(top)[0]:+.4f}), its interval includes 0")


def most_redundant(survey: Any) -> str:
    """The layer ``headline`` picks."""
    return headline(survey)[0]


def write_survey_outputs(survey: Any, out: str | Path, model: Any = None, images: Any = None,
                         heatmaps: list[str] | None = None, save: bool = True, compact: bool = False) -> list[Path]:
    """Write the survey file (``survey.pt``), the per-layer CSV, the JSON, the profile, heatmaps (default: the
    ``headline`` layer) and, given the model and images, a pair gallery of that layer. Returns the paths."""
    from analysis.plots import redundancy_profile, similarity_heatmap

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if save:
        written.append(survey.save(out / "survey.pt", stats=True, groups=not compact))
    csv_path = out / "survey.csv"
    survey.to_csv(csv_path)
    written.append(csv_path)
    json_path = out / "survey.json"
    atomic_write(json_path, (survey.to_json(indent=1) + "\n").encode())
    written.append(json_path)
    written += save_figure(redundancy_profile(survey), out / "profile.png")
    for layer in heatmaps or [most_redundant(survey)]:
        written += save_figure(similarity_heatmap(survey, layer), out / f"heatmap-{layer}.png")
        # a gallery shows maps: layers without spatial maps (C, not C×H×W: a Linear, a pooled output) get none
        if model is not None and images is not None and len(survey[layer].pairs) and len(survey[layer].shape) == 3:
            fig = survey_gallery(survey, layer, model=model, images=images)
            written += save_figure(fig, out / f"gallery-{layer}.png")
    return written


def layer_maps(model: LoadedModel | nn.Module | str, layer: str, images: Any = "samples", n_images: int = 4
               ) -> tuple[torch.Tensor, list[str] | None]:
    """One layer's maps (N×C×H×W) on the first ``n_images`` images of ``images`` (any image source of
    ``analysis.data.batches``), with the image names when the source has them."""
    net, preprocess, _ = as_loaded(model)
    parts = list(as_images(images, preprocess, limit=n_images).batches(n_images))
    if not parts:
        raise GhostmapsError("images holds no image; pass at least one.")
    batch = torch.cat([b.images for b in parts])
    names = None if any(b.names is None for b in parts) else [n for b in parts for n in b.names]
    _, maps = single_entry(capture_maps(net, layer, batch), layer, ndim=4)
    return maps, names


def survey_gallery(survey: Any, layer: str | None = None, *, model: LoadedModel | nn.Module | str,
                   images: Any = "samples", n_images: int = 4, **kwargs: Any) -> Figure:
    """``plots.pair_gallery`` of ``layer``'s strongest pairs on maps captured from ``model`` on ``images``
    (the survey keeps no maps). Other keyword arguments go to ``pair_gallery``."""
    if layer is None:
        raise GhostmapsError("survey_gallery needs the layer to show.")
    maps, names = layer_maps(model, layer, images, n_images)
    kwargs.setdefault("image_names", names)
    return pair_gallery(survey, layer, maps=maps, n_images=n_images, **kwargs)
