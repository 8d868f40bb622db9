"""The ``Survey`` result: per-layer scores, groups, pairs and statistics in network order; a table
(``to_frame``/``to_csv``), JSON, and ``save``/``load``/``rescore`` of everything including the statistics, so a
survey over thousands of images is computed once and re-scored or re-plotted later."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from analysis._core.errors import GhostmapsError
from analysis._core.io import atomic_write as _atomic_write
from analysis._core.results import Result, plain
from analysis.measure.groups import GhostGroups, ghost_groups
from analysis.measure.pairs import GhostPairs, ghost_pairs
from analysis.measure.scores import SCORE_NAMES, Redundancy, redundancy
from analysis.measure.similarity import ChannelSimilarity, channel_similarity
from analysis.stats import GroupedStats
from analysis.survey.settings import check_settings

if TYPE_CHECKING:
    from typing_extensions import Self

FORMAT = "ghostmaps-survey"
FORMAT_VERSION = 1
#: a layer's table row: the ``Redundancy`` row, then the shape and the strongest pair
_LAYER_COLUMNS = ("layer", "channels", "valid", "dead", "constant", "images", "metric", "threshold", "suggested_ratio",
                  *(f"{n}{suffix}" for n in SCORE_NAMES for suffix in ("", "_baseline", "_low", "_high")),
                  "shape", "top_pair", "top_pair_score")


@dataclass(eq=False)
class LayerSurvey(Result):
    """One layer of a survey: its output shape (C, H, W), scores, ghost groups and pairs, and statistics.

    ``rows()`` is the one ``row()``; ``to_dict`` leaves the statistics out (``Survey.save`` keeps them), and
    ``from_dict`` also reads the ``"stats"`` state dict that ``save`` writes beside them. Equality compares
    ``to_dict()``.
    """

    name: str
    shape: tuple[int, ...]
    redundancy: Redundancy
    groups: GhostGroups
    pairs: GhostPairs
    stats: GroupedStats | None = None
    _similarity: ChannelSimilarity | None = field(default=None, repr=False)

    @property
    def channels(self) -> int:
        return self.redundancy.channels

    @property
    def similarity(self) -> ChannelSimilarity:
        """The C×C similarity over all images (recomputed from the statistics, then cached)."""
        if self._similarity is None:
            if self.stats is None:
                raise GhostmapsError(f"layer {self.name!r} was saved without statistics; save with stats=True to "
                                     "keep the similarity matrices.")
            self._similarity = channel_similarity(self.stats.total(), self.redundancy.metric, layer=self.name)
        return self._similarity

    @property
    def dead(self) -> list[int]:
        return self.redundancy.dead

    @property
    def constant(self) -> list[int]:
        return self.redundancy.constant

    def row(self) -> dict[str, Any]:
        row = self.redundancy.row()
        row["shape"] = "×".join(map(str, self.shape))
        row["top_pair"] = f"{self.pairs[0].i}~{self.pairs[0].j}" if len(self.pairs) else ""
        row["top_pair_score"] = self.pairs[0].score if len(self.pairs) else None
        return row

    _COLUMNS = _LAYER_COLUMNS

    def rows(self) -> list[dict[str, Any]]:
        return [plain(self.row())]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "redundancy": self.redundancy.to_dict(),
                "groups": self.groups.to_dict(), "pairs": self.pairs.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        stats = GroupedStats.from_state_dict(data["stats"]) if data.get("stats") else None
        return cls(data["name"], tuple(int(v) for v in data["shape"]), Redundancy.from_dict(data["redundancy"]),
                   GhostGroups.from_dict(data["groups"]), GhostPairs.from_dict(data["pairs"]), stats)

    def __str__(self) -> str:
        return f"{self.redundancy}\n  {self.groups}\n{self.pairs}"


@dataclass(eq=False)
class Survey(Result):
    """A survey's per-layer results in network order, with what produced them in ``meta``.

    ``rows()``: one per layer; ``to_frame`` is indexed by layer. ``to_dict``/``from_dict`` carry everything but
    the statistics, which ``save``/``load`` keep too. Equality compares ``to_dict()``.
    """

    layers: dict[str, LayerSurvey]
    meta: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, layer: str) -> LayerSurvey:
        try:
            return self.layers[layer]
        except KeyError:
            from analysis._core.errors import UnknownLayerError, did_you_mean

            raise UnknownLayerError(f"the survey has no layer {layer!r}.{did_you_mean(layer, self.layers)}") from None

    def __iter__(self) -> Iterator[LayerSurvey]:
        return iter(self.layers.values())

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def names(self) -> list[str]:
        return list(self.layers)

    _COLUMNS = ("depth", *_LAYER_COLUMNS)
    _INDEX = "layer"

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per layer (depth order): every score with its baseline and interval."""
        return [plain({"depth": d, **layer.row()}) for d, layer in enumerate(self)]

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION, "meta": plain(self.meta),
                "layers": [layer.to_dict() for layer in self]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """A survey back from ``to_dict()`` or its JSON (no statistics), or from the payload ``save`` writes."""
        if data.get("format", FORMAT) != FORMAT:
            raise GhostmapsError(f"not a ghostmaps survey (format {data.get('format')!r}, expected {FORMAT!r}).")
        layers = [LayerSurvey.from_dict(entry) for entry in data["layers"]]
        return cls({layer.name: layer for layer in layers}, dict(data.get("meta", {})))

    def save(self, path: str | os.PathLike, stats: bool = True, groups: bool = True) -> Path:
        """Write the survey to one file (``torch.save`` of plain data), atomically. With ``stats`` the per-layer
        statistics come along, so ``load`` can give similarity matrices and ``rescore``; ``groups=False`` leaves
        out the per-group matrices (a file of 8·C² instead of (8 + 4K)·C² bytes per layer; a rescore then has
        no intervals)."""
        payload = self.to_dict()
        for entry, layer in zip(payload["layers"], self, strict=True):
            kept = None
            if stats and layer.stats is not None:
                kept = (layer.stats if groups else layer.stats.collapsed()).state_dict()
            entry["stats"] = kept
        buf = io.BytesIO()
        torch.save(payload, buf)
        path = Path(path)
        _atomic_write(path, buf.getvalue())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Survey:
        """Read a file written by ``save``."""
        path = Path(path)
        if not path.is_file():
            raise GhostmapsError(f"no survey file at {path}; run `ghostmaps survey` or analysis.survey first.")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
            raise GhostmapsError(f"{path} is not a readable survey file ({exc}).") from exc
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise GhostmapsError(f"{path} is not a ghostmaps survey file.")
        return cls.from_dict(payload)

    def rescore(self, threshold: float | None = None, metric: str | None = None, bootstrap: int | None = None,
                level: float | None = None, linkage: str | None = None, pairs: int | None = None,
                seed: int | None = None, layers: Sequence[str] | None = None) -> Survey:
        """The same survey scored with other settings, from the kept statistics (no forward pass); ``layers``
        keeps only those layers."""
        settings = {k: self.meta.get(k) for k in ("threshold", "metric", "bootstrap", "level", "linkage", "pairs",
                                                  "seed")}
        for k, v in {"threshold": threshold, "metric": metric, "bootstrap": bootstrap, "level": level,
                     "linkage": linkage, "pairs": pairs, "seed": seed}.items():
            if v is not None:
                settings[k] = v
        check_settings(**{k: v for k, v in settings.items() if k != "seed" and v is not None})
        chosen = [self[name] for name in layers] if layers is not None else list(self)
        missing = [layer.name for layer in chosen if layer.stats is None]
        if missing:
            raise GhostmapsError(f"layers {missing[:3]} have no statistics (saved with stats=False); survey again.")
        done = {layer.name: _score_layer(layer.name, layer.shape, layer.stats, **settings) for layer in chosen}
        return Survey(done, {**self.meta, **settings})

    def __str__(self) -> str:
        m = self.meta
        head = (f"survey of {m.get('model', 'a model')} over {m.get('images', '?')} images, {len(self)} layers, "
                f"{m.get('metric')} similarity, τ = {m.get('threshold')}")
        lines = [head, f"{'layer':<28} {'C':>5} {'dead':>4}  {'ghost frac [CI] (null)':<30} {'s':>3}"]
        for layer in self:
            r = layer.redundancy
            lines.append(f"{layer.name:<28} {r.channels:>5} {len(r.dead):>4}  {str(r.scores['ghost_fraction']):<30} "
                         f"{r.suggested_ratio:>3}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Survey({len(self)} layers, images={self.meta.get('images')}, model={self.meta.get('model')!r})"


# -- scoring one layer --------------------------------------------------------------------------------------
def _score_layer(name: str, shape: tuple[int, ...], stats: GroupedStats, *, metric: str, threshold: float,
                 bootstrap: int, level: float, linkage: str, pairs: int, seed: int) -> LayerSurvey:
    sim = channel_similarity(stats.total(), metric, layer=name)
    found = ghost_groups(sim, threshold, linkage)
    red = redundancy(stats, metric=metric, threshold=threshold, bootstrap=bootstrap, level=level,
                     linkage=linkage, seed=seed, layer=name, observed_groups=found)
    top = ghost_pairs(sim, k=pairs, absolute=True) if pairs else GhostPairs([], metric, name)
    return LayerSurvey(name, tuple(shape), red, found, top, stats, sim)


