"""Redundancy scores of a layer, their cross-image null baselines, and bootstrap confidence intervals.

For a layer with C channels, similarity matrix S (cosine or Pearson, over all positions of all images),
channel covariance Σ, the V valid channels (neither dead nor constant) and a threshold τ:

* ``ghost_fraction`` = #{valid i : max_{j≠i, j valid} |S_ij| ≥ τ} / V — channels that have a ghost partner.
* ``groups`` = number of ghost groups at τ (``ghost_groups``: complete-linkage agglomerative clustering of the
  valid channels on 1 − |S|), i.e. how many intrinsic maps are needed; singletons count.
* ``ratio`` = C / max(groups, 1) — GhostNet's s = (all outputs) / (intrinsic maps): a group of k channels is one
  intrinsic map and k − 1 cheap ones, a dead or constant channel costs nothing. ``suggested_ratio`` = ⌊ratio⌋
  (at least 1). It is the *average* group size, an upper bound on what a uniform s can reach; see
  ``analysis.reconstruct.suggest_ratio`` for a fitted alternative.
* ``participation_ratio`` = (Σ_k λ_k)² / Σ_k λ_k² = tr(Σ)² / ‖Σ‖_F² over the valid channels' covariance
  eigenvalues λ: the effective number of independent directions (C for equal independent channels, 1 for copies).
* ``rank99`` = the smallest k with λ_1 + … + λ_k ≥ 0.99 Σ λ (eigenvalues sorted descending).
* ``mean_abs_similarity`` = mean of |S_ij| over pairs i < j of valid channels.

**Null baseline.** Each score is also computed from the same layer with the channels of *different images*
paired: S⁰_ij uses E[x_i(n, p)·x_j(n', p)] over positions p and image pairs n ≠ n' (exact, from per-position
sums, see ``GroupedStats.cross_image_moment``) in place of E[x_i(n, p)·x_j(n, p)], with each channel's own
norm (and for Pearson and Σ⁰, its own mean and variance). This keeps what makes unrelated ReLU maps look alike —
non-negativity, sparsity, a shared spatial layout — and removes only what ties two channels *within an
image*. A layer is redundant where the observed score is far beyond its baseline, not merely high.

**Confidence interval.** Bias-corrected (BC) percentile bootstrap over images: the images fall into K groups
(blocks of consecutive images, or single images for small sets); each replicate redraws the filled groups with
replacement, adds their moments and recomputes every score. Replicates repeat images, which biases several
scores (e.g. ``groups`` and ``participation_ratio`` fall when images repeat), so the plain (1 ± level)/2
quantiles often miss the observed value; BC shifts the quantiles by z₀ = Φ⁻¹(fraction of replicates below the
observed value) to Φ(2z₀ ± z_{(1+level)/2}) (``bc_interval``). Where the observed value is still outside, a
note says so. Dead and constant channels are those of all images in every replicate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from analysis._core.errors import GhostmapsError
from analysis._core.results import Result, number, plain
from analysis._core.validation import (
    DEFAULT_LEVEL,
    DEFAULT_THRESHOLD,
    check_count,
    check_level,
    check_linkage,
    check_metric,
    check_threshold,
)
from analysis.measure.groups import GhostGroups, ghost_groups
from analysis.stats import DEFAULT_GROUPS, DEFAULT_TOL, GroupedStats, LayerStats, block_size
from analysis.stats import normalised_moment as _normalise

if TYPE_CHECKING:
    from typing_extensions import Self

SCORE_NAMES = ("ghost_fraction", "groups", "ratio", "participation_ratio", "rank99", "mean_abs_similarity")


def _optional(v: Any) -> float | None:
    return None if v is None else float(v)


@dataclass
class Score(Result):
    """One score: the observed value, its null baseline and its bootstrap interval (None when unavailable)."""

    observed: float
    baseline: float | None = None
    low: float | None = None
    high: float | None = None

    @property
    def excess(self) -> float | None:
        """observed − baseline."""
        return None if self.baseline is None else self.observed - self.baseline

    _COLUMNS = ("observed", "baseline", "low", "high")

    def rows(self) -> list[dict[str, Any]]:
        return [self.to_dict()]

    def to_dict(self) -> dict[str, Any]:
        return {"observed": plain(self.observed), "baseline": plain(self.baseline), "low": plain(self.low),
                "high": plain(self.high)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls(number(data["observed"]), _optional(data.get("baseline")), _optional(data.get("low")),
                   _optional(data.get("high")))

    def __str__(self) -> str:
        text = f"{self.observed:.4g}"
        if self.low is not None:
            text += f" [{self.low:.4g}, {self.high:.4g}]"
        if self.baseline is not None:
            text += f" (null {self.baseline:.4g})"
        return text


@dataclass
class Redundancy(Result):
    """A layer's redundancy scores (see the module docstring for every formula). ``rows()`` is the one ``row()``."""

    channels: int
    valid: int
    dead: list[int]
    constant: list[int]
    images: int
    metric: str
    threshold: float
    scores: dict[str, Score]
    level: float = 0.95
    bootstrap: int = 0
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
        """One flat table row: observed, baseline, low, high per score."""
        out: dict[str, Any] = {"layer": self.layer, "channels": self.channels, "valid": self.valid,
                               "dead": len(self.dead), "constant": len(self.constant), "images": self.images,
                               "metric": self.metric, "threshold": self.threshold,
                               "suggested_ratio": self.suggested_ratio}
        for name, score in self.scores.items():
            out[name] = score.observed
            out[f"{name}_baseline"] = score.baseline
            out[f"{name}_low"] = score.low
            out[f"{name}_high"] = score.high
        return out

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
                f"constant), {self.images} images, {self.metric}, τ = {self.threshold:g}, suggested s = "
                f"{self.suggested_ratio}")
        return "\n".join([head, *(f"  {k:<20} {s}" for k, s in self.scores.items())])


# -- the scores of one matrix ---------------------------------------------------------------------------------
def _moments(stats: LayerStats, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(the matrix the metric normalises, the covariance)."""
    cov = stats.covariance
    return (stats.second_moment if metric == "cosine" else cov), cov


def matrix_scores(similarity: torch.Tensor, valid: torch.Tensor, covariance: torch.Tensor,
                  threshold: float = DEFAULT_THRESHOLD, linkage: str = "complete",
                  groups: GhostGroups | None = None, fast: bool = False) -> dict[str, float]:
    """Every score of one layer from its C×C similarity, valid-channel mask and covariance (formulas in the
    module docstring). ``fast`` finds the eigenvalues in float32 (for bootstrap replicates)."""
    sim = similarity.detach().cpu().to(torch.float64)
    valid = valid.detach().cpu().bool()
    c = sim.shape[0]
    idx = torch.nonzero(valid).flatten()
    v = int(idx.numel())
    sub = sim[idx][:, idx].abs()
    if v > 1:
        off = sub.clone()
        off.fill_diagonal_(-1.0)
        partner = off.max(dim=1).values >= threshold - 1e-12
        fraction = float(partner.double().mean())
        iu = torch.triu_indices(v, v, offset=1)
        mean_abs = float(sub[iu[0], iu[1]].mean())
    else:
        fraction, mean_abs = 0.0, 0.0
    if groups is None:
        groups = ghost_groups(sim, threshold, linkage, valid=valid)
    n_groups = groups.count
    cov = covariance.detach().cpu().to(torch.float64)[idx][:, idx]
    cov = (cov + cov.T) / 2
    trace = float(cov.diagonal().clamp_min(0).sum())
    if v and trace > 0:
        pr = trace**2 / float((cov**2).sum())  # tr(Σ)² / ‖Σ‖_F² = (Σλ)² / Σλ², no eigenvalues needed
        lam = torch.linalg.eigvalsh(cov.float() if fast else cov).double().clamp_min(0).flip(0)
        total = float(lam.sum())
        cum = torch.cumsum(lam, 0) / max(total, 1e-300)
        rank99 = int(torch.searchsorted(cum, torch.tensor([0.99 - 1e-12], dtype=cum.dtype)).item()) + 1
        rank99 = min(rank99, v)
    else:
        pr, rank99 = 0.0, 0
    return {"ghost_fraction": fraction, "groups": float(n_groups), "ratio": c / max(n_groups, 1),
            "participation_ratio": pr, "rank99": float(rank99), "mean_abs_similarity": mean_abs}


TIE_RTOL = 1e-6  # replicates use float32 group matrices: closer than this to the observed value is a tie


def bc_interval(replicates: Any, observed: float, level: float = DEFAULT_LEVEL, rtol: float = TIE_RTOL
                ) -> tuple[float, float]:
    """Bias-corrected percentile bootstrap interval (Efron's BC): with z₀ = Φ⁻¹(p), p the fraction of
    replicates below ``observed`` (ties — within ``rtol`` relative — count one half; p kept within
    [1/(2B), 1 − 1/(2B)] for B replicates), the interval is the replicates' Φ(2z₀ + z_{(1−level)/2}) and
    Φ(2z₀ + z_{(1+level)/2}) quantiles. With p = ½ it is the plain percentile interval; it follows the observed
    value where the replicates are shifted (a replicate that redraws every group once is a tie)."""
    from statistics import NormalDist

    values = np.asarray(replicates, dtype=np.float64)
    b = values.size
    if b == 0:
        raise GhostmapsError("bc_interval needs at least one bootstrap replicate.")
    tie = np.abs(values - observed) <= rtol * max(abs(observed), 1e-300)
    p = (np.count_nonzero((values < observed) & ~tie) + 0.5 * np.count_nonzero(tie)) / b
    p = min(max(p, 0.5 / b), 1 - 0.5 / b)
    norm = NormalDist()
    z0 = norm.inv_cdf(p) if 0.0 < p < 1.0 else 0.0
    lo_q = norm.cdf(2 * z0 + norm.inv_cdf((1 - level) / 2))
    hi_q = norm.cdf(2 * z0 + norm.inv_cdf((1 + level) / 2))
    low, high = np.quantile(values, [lo_q, hi_q])
    return float(low), float(high)


def _as_grouped(source: LayerStats | GroupedStats | torch.Tensor, groups: int, tol: float) -> GroupedStats:
    if isinstance(source, GroupedStats):
        return source
    if isinstance(source, LayerStats):
        raise GhostmapsError("redundancy needs GroupedStats (per-image groups and position sums) for baselines and "
                             "intervals; pass the maps, or GroupedStats from analysis.survey.")
    if not isinstance(source, torch.Tensor):
        raise GhostmapsError(f"redundancy takes N×C×H×W maps or GroupedStats, got {type(source).__name__}.")
    if source.dim() == 3:
        source = source.unsqueeze(0)
    stats = GroupedStats(groups=groups, chunk=block_size(source.shape[0], groups), tol=tol)
    return stats.update(source)


def redundancy(
    source: GroupedStats | torch.Tensor,
    metric: str = "cosine",
    threshold: float = DEFAULT_THRESHOLD,
    bootstrap: int = 200,
    level: float = DEFAULT_LEVEL,
    linkage: str = "complete",
    seed: int = 0,
    layer: str | None = None,
    groups: int = DEFAULT_GROUPS,
    tol: float = DEFAULT_TOL,
    observed_groups: GhostGroups | None = None,
) -> Redundancy:
    """A layer's redundancy scores with null baselines and bootstrap intervals (formulas: module docstring).

    Args:
        source: the layer's ``GroupedStats`` (what ``survey`` accumulates) or its maps, N×C×H×W.
        metric: ``"cosine"`` or ``"pearson"`` similarity.
        threshold: τ, the |similarity| at which two channels count as ghosts of each other.
        bootstrap: number of bootstrap replicates (0: no intervals). Needs at least two filled image groups.
        level: confidence level of the intervals.
        linkage: ghost-group linkage (see ``ghost_groups``).
        seed: seed of the bootstrap draws (results are deterministic).
        layer: a name to carry along.
        groups, tol: for maps only — image groups and zero tolerance of the statistics.
        observed_groups: the ghost groups of the observed similarity at ``threshold`` and ``linkage`` when the
            caller already has them (``survey`` does), so the clustering is not run twice.

    Scoring runs on the CPU in float64 whatever device the statistics are on (they are C×C matrices).
    """
    check_metric(metric)
    threshold = check_threshold(threshold)
    check_linkage(linkage)
    level = check_level(level)
    bootstrap = check_count(bootstrap, "bootstrap", hint=" (0: no intervals)")
    grouped = _as_grouped(source, groups, tol)
    if grouped.device != torch.device("cpu"):
        grouped = grouped.to("cpu")  # C×C moments: scoring on the CPU keeps every mask and moment on one device
    total = grouped.total()
    dead, constant = total.dead, total.constant
    valid = ~(dead | constant)
    moment, cov = _moments(total, metric)
    sim = _normalise(moment, valid)
    observed = matrix_scores(sim, valid, cov, threshold, linkage, groups=observed_groups)
    notes: list[str] = []

    baseline: dict[str, float] | None = None
    cross = grouped.cross_image_moment()
    if cross is None:
        notes.append("no null baseline: it needs at least two images of one size")
    else:
        mean = total.mean
        cov0 = cross - torch.outer(mean, mean)
        cov0.diagonal().copy_(cov.diagonal())
        baseline = matrix_scores(_normalise(cross if metric == "cosine" else cov0, valid), valid, cov0,
                                 threshold, linkage)

    draws: dict[str, list[float]] = {k: [] for k in observed}
    filled = grouped.filled_groups
    if bootstrap and grouped.groups == 1:
        notes.append("no confidence interval: these statistics keep no image groups (groups=1 or a compact file)")
    elif bootstrap and len(filled) < 2:
        notes.append("no confidence interval: it needs at least two images" if grouped.total_images < 2 else
                     f"no confidence interval: it needs images in at least two image groups, and all "
                     f"{grouped.total_images} images fell into one (blocks of {grouped.chunk}); survey more "
                     "images or use smaller blocks")
    elif bootstrap:
        rng = np.random.default_rng(seed)
        for _ in range(bootstrap):
            w = torch.zeros(grouped.groups, dtype=torch.float64)
            w[filled] = torch.from_numpy(rng.multinomial(len(filled), [1.0 / len(filled)] * len(filled)).astype(float))
            rep = grouped.resample(w)
            m_b, cov_b = _moments(rep, metric)
            for k, value in matrix_scores(_normalise(m_b, valid), valid, cov_b, threshold, linkage, fast=True).items():
                draws[k].append(value)
    scores: dict[str, Score] = {}
    for k, value in observed.items():
        low = high = None
        if draws[k]:
            low, high = bc_interval(draws[k], value, level)
        scores[k] = Score(value, None if baseline is None else baseline[k], low, high)
    outside = [k for k, sc in scores.items() if sc.low is not None and not sc.low - 1e-12 <= sc.observed <= sc.high + 1e-12]
    if outside:
        notes.append(f"observed {', '.join(outside)} outside the bootstrap interval: these scores depend on the "
                     "number of images (replicates repeat images); survey more images before relying on them")
    return Redundancy(
        channels=int(total.channels), valid=int(valid.sum()), dead=torch.nonzero(dead).flatten().tolist(),
        constant=torch.nonzero(constant).flatten().tolist(), images=total.images, metric=metric,
        threshold=float(threshold), scores=scores, level=level, bootstrap=bootstrap if draws["groups"] else 0,
        layer=layer, notes=notes,
    )
