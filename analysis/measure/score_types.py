"""The result classes of the redundancy scores (``Baseline``, ``Score``, ``Redundancy``) and their table columns;
the scores themselves, their formulas and baselines: :mod:`analysis.measure.scores`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from analysis._core.results import Result, number, plain

if TYPE_CHECKING:
    from typing_extensions import Self

SMOOTH = ("mean_sq_similarity", "participation_ratio")
THRESHOLD = ("ghost_fraction", "groups", "ratio")
SCORE_NAMES = (*SMOOTH, *THRESHOLD, "mean_abs_similarity", "rank99")
BASELINES = ("null", "untrained")


def _optional(v: Any) -> float | None:
    return None if v is None else float(v)


def score_columns(name: str) -> tuple[str, ...]:
    """A score's columns in a table row: estimate and interval, split halves (threshold scores), and per
    baseline its value and the excess with its interval."""
    halves = () if name in SMOOTH else (f"{name}_half_a", f"{name}_half_b")
    return (name, f"{name}_low", f"{name}_high", *halves,
            *(f"{name}_{tag}{suffix}" for tag in BASELINES for suffix in ("", "_excess", "_excess_low",
                                                                          "_excess_high")))


REDUNDANCY_COLUMNS = ("layer", "channels", "valid", "dead", "constant", "sparse", "images", "metric", "threshold",
                      "interval_groups", "estimated", "suggested_ratio", "groups_agreement",
                      *(c for n in SCORE_NAMES for c in score_columns(n)))


@dataclass
class Baseline(Result):
    """A score on one baseline: its value and the excess ``observed − value`` with its paired interval."""

    value: float | None = None
    excess: float | None = None
    low: float | None = None
    high: float | None = None

    _COLUMNS = ("value", "excess", "low", "high")

    def rows(self) -> list[dict[str, Any]]:
        return [self.to_dict()]

    def to_dict(self) -> dict[str, Any]:
        return {k: plain(getattr(self, k)) for k in self._COLUMNS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls(*(_optional(data.get(k)) for k in cls._COLUMNS))


@dataclass
class Score(Result):
    """One score: the estimate, its interval (smooth scores), its baselines, and its split-half values
    (threshold scores: a stability measure, not an interval). ``rows()``: one flat row of all of them."""

    observed: float
    low: float | None = None
    high: float | None = None
    null: Baseline = field(default_factory=Baseline)
    untrained: Baseline | None = None
    halves: list[float] | None = None

    @property
    def baseline(self) -> float | None:
        """The noise-matched null's value."""
        return self.null.value

    @property
    def excess(self) -> float | None:
        """observed − null."""
        return self.null.excess

    _COLUMNS = ("observed", "low", "high", "half_a", "half_b",
                *(f"{tag}{suffix}" for tag in BASELINES for suffix in ("", "_excess", "_excess_low", "_excess_high")))

    def rows(self) -> list[dict[str, Any]]:
        out: dict[str, Any] = {"observed": self.observed, "low": self.low, "high": self.high}
        out["half_a"], out["half_b"] = self.halves or (None, None)
        for tag, b in (("null", self.null), ("untrained", self.untrained or Baseline())):
            out[tag], out[f"{tag}_excess"], out[f"{tag}_excess_low"], out[f"{tag}_excess_high"] = \
                b.value, b.excess, b.low, b.high
        return [plain(out)]

    def to_dict(self) -> dict[str, Any]:
        return {"observed": plain(self.observed), "low": plain(self.low), "high": plain(self.high),
                "null": self.null.to_dict(), "untrained": None if self.untrained is None else self.untrained.to_dict(),
                "halves": plain(self.halves)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        untrained, halves = data.get("untrained"), data.get("halves")
        return cls(number(data["observed"]), _optional(data.get("low")), _optional(data.get("high")),
                   Baseline.from_dict(data.get("null") or {}),
                   None if untrained is None else Baseline.from_dict(untrained),
                   None if halves is None else [number(v) for v in halves])

    def __str__(self) -> str:
        text = f"{self.observed:.4g}"
        if self.low is not None:
            text += f" [{self.low:.4g}, {self.high:.4g}]"
        elif self.halves is not None:
            text += f" (halves {self.halves[0]:.4g}, {self.halves[1]:.4g})"
        for name, b in (("null", self.null), ("untrained", self.untrained)):
            if b is not None and b.value is not None:
                text += f" {name} {b.value:.4g}"
                if b.low is not None:
                    text += f" Δ {b.excess:+.4g} [{b.low:+.4g}, {b.high:+.4g}]"
        return text


@dataclass
class Redundancy(Result):
    """A layer's redundancy scores (module docstring: every formula and what each baseline answers). ``rows()``
    is the one ``row()``, with a column for every score (empty where a score was not computed)."""

    channels: int
    valid: int
    dead: list[int]
    constant: list[int]
    images: int
    metric: str
    threshold: float
    scores: dict[str, Score]
    level: float = 0.95
    interval_groups: int = 0
    sparse: list[int] = field(default_factory=list)
    groups_agreement: float | None = None
    estimated: bool = False
    baseline_images: int | None = None
    layer: str | None = None
    notes: list[str] = field(default_factory=list)

    def __getattr__(self, name: str) -> Score:
        scores = self.__dict__.get("scores", {})
        if name in scores:
            return scores[name]
        raise AttributeError(name)

    @property
    def suggested_ratio(self) -> int:
        """⌊C / groups⌋, at least 1: the Ghost ratio s this layer's measured redundancy supports at τ."""
        return max(1, int(math.floor(self.scores["ratio"].observed + 1e-9)))

    def row(self) -> dict[str, Any]:
        """One flat table row: per score its estimate, interval, split halves, and per baseline its value and
        the excess with its interval."""
        out: dict[str, Any] = {"layer": self.layer, "channels": self.channels, "valid": self.valid,
                               "dead": len(self.dead), "constant": len(self.constant), "sparse": len(self.sparse),
                               "images": self.images, "metric": self.metric, "threshold": self.threshold,
                               "interval_groups": self.interval_groups, "estimated": self.estimated,
                               "suggested_ratio": self.suggested_ratio, "groups_agreement": self.groups_agreement}
        for name in SCORE_NAMES:
            s = self.scores.get(name)
            row = {} if s is None else s.rows()[0]
            out[name], out[f"{name}_low"], out[f"{name}_high"] = row.get("observed"), row.get("low"), row.get("high")
            if name not in SMOOTH:
                out[f"{name}_half_a"], out[f"{name}_half_b"] = row.get("half_a"), row.get("half_b")
            for tag in BASELINES:
                for suffix in ("", "_excess", "_excess_low", "_excess_high"):
                    out[f"{name}_{tag}{suffix}"] = row.get(f"{tag}{suffix}")
        return out

    _COLUMNS = REDUNDANCY_COLUMNS

    def rows(self) -> list[dict[str, Any]]:
        return [plain(self.row())]

    def to_dict(self) -> dict[str, Any]:
        d = plain({k: v for k, v in self.__dict__.items() if k != "scores"})
        d["scores"] = {k: s.to_dict() for k, s in self.scores.items()}
        d["suggested_ratio"] = self.suggested_ratio
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        data = dict(data)
        data.pop("suggested_ratio", None)  # derived from the ratio score
        data["scores"] = {k: Score.from_dict(v) for k, v in data["scores"].items()}
        return cls(**data)

    def __str__(self) -> str:
        head = (f"{self.layer or 'layer'}: {self.channels} channels ({len(self.dead)} dead, {len(self.constant)} "
                f"constant, {len(self.sparse)} sparse), {self.images} images, {self.metric}, τ = {self.threshold:g}, "
                f"suggested s = {self.suggested_ratio}")
        return "\n".join([head, *(f"  {k:<20} {s}" for k, s in self.scores.items()),
                          *(f"  note: {n}" for n in self.notes)])
