"""The ``Survey`` result: per-layer scores, groups, pairs and statistics in network order; a table
(``to_frame``/``to_csv``), JSON, and ``save``/``load``/``rescore`` of everything including the statistics, so a
survey over thousands of images is computed once and re-scored or re-plotted later."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis._core.errors import GhostmapsError
from analysis._core.payload import read_payload, write_payload
from analysis._core.results import Result, plain
from analysis._core.validation import check_level, check_threshold
from analysis.measure.groups import GhostGroups
from analysis.measure.pairs import GhostPairs, ghost_pairs
from analysis.measure.scores import REDUNDANCY_COLUMNS, Redundancy, score_layer
from analysis.measure.similarity import ChannelSimilarity, channel_similarity
from analysis.stats import GroupedStats
from analysis.survey.settings import check_settings

if TYPE_CHECKING:
    from typing_extensions import Self

FORMAT = "ghostmaps-survey"
FORMAT_VERSION = 3  # 3: group vectors in the row-block layout of analysis.stats._live (2: packed triangles)
SCORING = ("threshold", "metric", "level", "linkage", "pairs", "rank99")
#: a layer's table row: the ``Redundancy`` row, then the shape and the strongest pair
_LAYER_COLUMNS = (*REDUNDANCY_COLUMNS, "shape", "top_pair", "top_pair_score", "top_pair_sparse", "sparse_pairs")


@dataclass(eq=False)
class LayerSurvey(Result):
    """One layer of a survey: its output shape (C, H, W), scores, ghost groups and pairs, and statistics
    (``baseline_stats``: the untrained network's, when the survey had one).

    ``rows()`` is the one ``row()``; ``to_dict`` leaves the statistics out (``Survey.save`` keeps them), and
    ``from_dict`` also reads the ``"stats"`` and ``"baseline_stats"`` state dicts that ``save`` writes beside
    them. Equality compares ``to_dict()``.
    """

    name: str
    shape: tuple[int, ...]
    redundancy: Redundancy
    groups: GhostGroups
    pairs: GhostPairs
    stats: GroupedStats | None = None
    baseline_stats: GroupedStats | None = None
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
        row["top_pair_sparse"] = self.pairs[0].sparse if len(self.pairs) else None
        row["sparse_pairs"] = sum(p.sparse for p in self.pairs)
        return row

    _COLUMNS = _LAYER_COLUMNS

    def rows(self) -> list[dict[str, Any]]:
        return [plain(self.row())]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "redundancy": self.redundancy.to_dict(),
                "groups": self.groups.to_dict(), "pairs": self.pairs.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        stats, base = (GroupedStats.from_state_dict(data[k]) if data.get(k) else None
                       for k in ("stats", "baseline_stats"))
        return cls(data["name"], tuple(int(v) for v in data["shape"]), Redundancy.from_dict(data["redundancy"]),
                   GhostGroups.from_dict(data["groups"]), GhostPairs.from_dict(data["pairs"]), stats, base)

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
        statistics come along (and the untrained baseline's), so ``load`` can give similarity matrices and
        ``rescore``; ``groups=False`` leaves out the per-group vectors (a file of 16·C² instead of
        16·C² + 4·K·C² bytes per layer; a rescore then has no intervals)."""
        payload = self.to_dict()
        for entry, layer in zip(payload["layers"], self, strict=True):
            for key, kept in (("stats", layer.stats), ("baseline_stats", layer.baseline_stats)):
                entry[key] = (kept if groups else kept.collapsed()).state_dict() if stats and kept is not None \
                    else None
        return write_payload(path, payload)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Survey:
        """Read a file written by ``save``."""
        path = Path(path)
        if not path.is_file():
            raise GhostmapsError(f"no survey file at {path}; run `ghostmaps survey` or analysis.survey first.")
        payload = read_payload(path, FORMAT, "survey file")
        if payload.get("version") != FORMAT_VERSION:
            raise GhostmapsError(f"{path} is a survey file of format version {payload.get('version')}, this "
                                 f"ghostmaps reads version {FORMAT_VERSION}; survey again.")
        return cls.from_dict(payload)

    def rescore(self, threshold: float | None = None, metric: str | None = None, level: float | None = None,
                linkage: str | None = None, pairs: int | None = None, rank99: bool | None = None,
                layers: Sequence[str] | None = None) -> Survey:
        """The same survey scored with other settings, from the kept statistics (no forward pass); ``layers``
        keeps only those layers."""
        settings = {k: self.meta.get(k) for k in SCORING}
        for k, v in {"threshold": threshold, "metric": metric, "level": level, "linkage": linkage,
                     "pairs": pairs, "rank99": rank99}.items():
            if v is not None:
                settings[k] = v
        settings["rank99"] = bool(settings.get("rank99"))
        check_settings(**{k: v for k, v in settings.items() if v is not None})
        chosen = [self[name] for name in layers] if layers is not None else list(self)
        missing = [layer.name for layer in chosen if layer.stats is None]
        if missing:
            raise GhostmapsError(f"layers {missing[:3]} have no statistics (saved with stats=False); survey again.")
        done = {layer.name: _score_layer(layer.name, layer.shape, layer.stats, layer.baseline_stats, **settings)
                for layer in chosen}
        return Survey(done, {**self.meta, **settings})

    def __str__(self) -> str:
        m = self.meta
        first = next(iter(self.layers.values()), None)
        k = first.redundancy.interval_groups if first is not None else 0
        head = (f"survey of {m.get('model', 'a model')} over {m.get('images', '?')} images, {len(self)} layers, "
                f"{m.get('metric')} similarity, τ = {m.get('threshold')}; intervals: "
                f"{int(round(100 * m.get('level', 0.95)))}% jackknife over {k} image groups"
                + (f"; moments estimated from {m['positions']} positions per image" if m.get("positions") else "")
                + "; ghost fraction: value (split halves), not an interval")
        raw = [layer.name for layer in self if layer.redundancy.interval_groups < 2]
        if raw:
            head += (f"\nNOT corrected for sample size (no image groups: groups=1, a compact file or too few "
                     f"images): mean S², the participation ratio and their baselines of {len(raw)} layer(s), e.g. "
                     f"{raw[0]}; no intervals")
        base = any(layer.redundancy.scores["mean_sq_similarity"].untrained is not None for layer in self)
        if base:
            every, bpos = m.get("baseline_every", 1), m.get("baseline_positions")
            nth = {1: "", 2: " 2nd", 3: " 3rd"}.get(every, f" {every}th")
            head += (f"\nuntrained baseline: every{nth} image pair"
                     + (f", moments estimated from {bpos} positions per image" if bpos else ", all positions")
                     + f", BatchNorm re-estimated on {m.get('baseline_bn_images', '?')} images")
        cols = f"{'layer':<26} {'C':>5} {'dead':>4} {'sparse':>6}  {'mean S² [CI]':<24} {'Δ null [CI]':<26}"
        cols += f" {'Δ untrained [CI]':<26}" if base else ""
        lines = [head, cols + f" {'ghost frac (halves)':<22} {'s':>2}"]
        for layer in self:
            r = layer.redundancy
            sq, gf = r.scores["mean_sq_similarity"], r.scores["ghost_fraction"]
            row = f"{layer.name:<26} {r.channels:>5} {len(r.dead):>4} {len(r.sparse):>6}  {_est(sq):<24} " \
                  f"{_delta(sq.null):<26}"
            row += f" {_delta(sq.untrained):<26}" if base else ""
            halves = f" ({gf.halves[0]:.2f}, {gf.halves[1]:.2f})" if gf.halves else ""
            lines.append(row + f" {f'{gf.observed:.3f}{halves}':<22} {r.suggested_ratio:>2}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Survey({len(self)} layers, images={self.meta.get('images')}, model={self.meta.get('model')!r})"


def _est(score: Any) -> str:
    return f"{score.observed:.4f}" + ("" if score.low is None else f" [{score.low:.4f}, {score.high:.4f}]")


def _delta(b: Any) -> str:
    if b is None or b.excess is None:
        return "—"
    return f"{b.excess:+.4f}" + ("" if b.low is None else f" [{b.low:+.4f}, {b.high:+.4f}]")


# -- scoring one layer --------------------------------------------------------------------------------------
def _score_layer(name: str, shape: tuple[int, ...], stats: GroupedStats, baseline: GroupedStats | None = None, *,
                 metric: str, threshold: float, level: float, linkage: str, pairs: int, rank99: bool = False
                 ) -> LayerSurvey:
    total = stats.total()  # one copy of the Gram matrix for the similarity and the scores
    sim = channel_similarity(total, metric, layer=name)
    red, found = score_layer(stats, metric, check_threshold(threshold), check_level(level), linkage, name,
                             baseline=baseline, rank99=rank99, similarity=sim.matrix, total=total)
    top = ghost_pairs(sim, k=pairs, absolute=True) if pairs else GhostPairs([], metric, name)
    return LayerSurvey(name, tuple(shape), red, found, top, stats, baseline, sim)
