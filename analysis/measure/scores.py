"""Redundancy scores of a layer, their baselines (noise-matched null, untrained network) and intervals.

A layer with C channels, V of them valid (neither dead nor constant), its similarity S (Pearson by default,
or cosine) over all positions of all images, and a threshold τ:

* ``mean_sq_similarity`` = mean of S_ij² over valid pairs i < j, bias-corrected (the jackknife removes the
  noise floor E[S²] − ρ² ≈ 1/n_eff), with a jackknife-t interval: the smooth similarity score.
* ``participation_ratio`` = (tr S)² / ‖S‖²_F = V / (1 + (V − 1)·mean_sq_similarity): the effective number of
  independent channels, from the bias-corrected mean square (uncorrected, noise alone makes it ≈ n_eff when
  C > n_eff), its interval the mean square's mapped through this decreasing function.
* ``ghost_fraction`` = #{valid i : max_{j≠i} |S_ij| ≥ τ} / V; ``groups`` = ghost groups at τ (``ghost_groups``),
  singletons count; ``ratio`` = C / max(groups, 1) (GhostNet's s; ``suggested_ratio`` = ⌊ratio⌋).
* ``rank99`` (``rank99=True``, O(C³)): directions holding 99% of the variance, cross-validated between two
  halves of the images (``_scoring.rank99_split``) so that noise does not spread the spectrum.
* ``mean_abs_similarity`` = mean |S_ij|: descriptive only. |S| has a noise floor (≈ 0.8/√n_eff for ρ = 0)
  that no interval can remove (no estimator of |ρ| is unbiased at ρ = 0), so it gets its null, no interval.

Threshold scores (ghost_fraction, groups, ratio, rank99) jump as pairs cross τ; a resampling interval is not
valid for them, so instead of an interval they carry a stability measure: their values on two halves of the
images (alternate image groups) and, for the groups, the halves' adjusted Rand index (``groups_agreement``).

**Baselines.** ``null``: the same scores with each image's channels compared with its pair partner's (images
2j and 2j + 1 of the stream) at the same positions: as many terms, as much noise as the observed score,
nothing tying two channels within an image. ``untrained`` (``baseline=`` statistics of the same architecture,
re-initialised, BN re-estimated on the same images, see ``analysis.survey.baseline``): what the architecture
alone gives on these images. Every smooth score's excess over each baseline gets a paired jackknife interval
(the same image groups left out of both).

**Intervals** (``analysis.stats.jackknife``): delete-one-group jackknife over the K image groups, t_{K−1}
quantiles, centred on the printed estimate; coverage checked by simulation. The mean square, its interval and
its baseline values are shown clipped to [0, 1]; an excess is the difference of the unclipped estimates (so it
stays unbiased near 0, where the printed values are clipped).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from analysis._core.errors import GhostmapsError
from analysis._core.validation import (
    DEFAULT_LEVEL,
    DEFAULT_METRIC,
    DEFAULT_THRESHOLD,
    check_level,
    check_linkage,
    check_metric,
    check_threshold,
)
from analysis.measure._parts import baseline_part, half_parts, null_part, observed_part
from analysis.measure._scoring import halves, null_similarity, observed_similarity, plain_rank99, rank99_split
from analysis.measure.groups import GhostGroups
from analysis.measure.replicates import MsqReplicates, about_centre, msq_replicates
from analysis.measure.score_types import (
    REDUNDANCY_COLUMNS,
    SCORE_NAMES,
    SMOOTH,
    THRESHOLD,
    Baseline,
    Redundancy,
    Score,
    score_columns,
)
from analysis.measure.similarity import SPARSE_APOZ
from analysis.stats import DEFAULT_GROUPS, DEFAULT_TOL, GroupedStats, LayerStats, block_size
from analysis.stats.jackknife import adjusted_rand, correlation, jackknife, mover

__all__ = ["DEFAULT_THRESHOLD", "REDUNDANCY_COLUMNS", "SCORE_NAMES", "SMOOTH", "THRESHOLD", "Baseline", "Redundancy",
           "Score", "redundancy", "score_columns"]


# -- scoring ----------------------------------------------------------------------------------------------------
def _as_grouped(source: GroupedStats | torch.Tensor, groups: int, tol: float) -> GroupedStats:
    if isinstance(source, GroupedStats):
        return source
    if isinstance(source, LayerStats):
        raise GhostmapsError("redundancy needs GroupedStats (image groups and pairs) for baselines and intervals; "
                             "pass the maps, or GroupedStats from analysis.survey.")
    if not isinstance(source, torch.Tensor):
        raise GhostmapsError(f"redundancy takes N×C×H×W maps or GroupedStats, got {type(source).__name__}.")
    if source.dim() == 3:
        source = source.unsqueeze(0)
    return GroupedStats(groups=groups, chunk=block_size(source.shape[0], groups), tol=tol).update(source).finish()


def _pr(v: int) -> Any:
    """The participation ratio as a function of the mean squared similarity (decreasing)."""
    if v <= 1:
        return lambda x: float(v)
    return lambda x: v / (1 + (v - 1) * min(max(x, 0.0), 1.0))


Triple = tuple[float, float | None, float | None]


def _msq_interval(value: float, reps: np.ndarray, sizes: np.ndarray, level: float) -> Triple:
    """(bias-corrected estimate, low, high) of a mean squared similarity; (value, None, None) without groups."""
    if len(reps) < 2:
        return value, None, None
    return jackknife(value, reps, sizes, level).log_interval()


def _excess(a: Triple, b: Triple, r: float, f: Any = None) -> Baseline:
    """A baseline's value (b, through f) and the excess a − b with its MOVER interval (f: decreasing map)."""
    if f is not None:
        a = (f(a[0]), None if a[2] is None else f(a[2]), None if a[1] is None else f(a[1]))
        b = (f(b[0]), None if b[2] is None else f(b[2]), None if b[1] is None else f(b[1]))
    value = min(max(b[0], 0.0), 1.0) if f is None else b[0]
    if a[1] is None or b[1] is None:
        return Baseline(value, a[0] - b[0])
    diff, low, high = mover(a, b, r)  # type: ignore[arg-type]
    return Baseline(value, diff, low, high)


def _aligned(obs: MsqReplicates, other: MsqReplicates) -> np.ndarray:
    """The other statistics' replicates in the observed groups' order (a group it has no image in leaves it
    unchanged: its replicate is its full estimate)."""
    where = {g: n for n, g in enumerate(other.groups)}
    return np.array([other.replicates[where[g]] if g in where and len(other.replicates) else other.observed
                     for g in obs.groups])


def redundancy(
    source: GroupedStats | torch.Tensor,
    metric: str = DEFAULT_METRIC,
    threshold: float = DEFAULT_THRESHOLD,
    level: float = DEFAULT_LEVEL,
    linkage: str = "complete",
    layer: str | None = None,
    groups: int = DEFAULT_GROUPS,
    tol: float = DEFAULT_TOL,
    observed_groups: GhostGroups | None = None,
    baseline: GroupedStats | None = None,
    rank99: bool = False,
    similarity: torch.Tensor | None = None,
) -> Redundancy:
    """A layer's redundancy scores with their baselines and intervals (formulas: module docstring).

    Args:
        source: the layer's ``GroupedStats`` (what ``survey`` accumulates) or its maps, N×C×H×W.
        metric: ``"pearson"`` (default: invariant to the per-channel scale and offset a following BN removes)
            or ``"cosine"`` (rewards non-negative maps for merely being positive).
        threshold: τ, the |similarity| at which two channels count as ghosts of each other.
        level: confidence level of the intervals.
        linkage: ghost-group linkage (see ``ghost_groups``).
        layer: a name to carry along.
        groups, tol: for maps only — image groups and zero tolerance of the statistics.
        observed_groups: the ghost groups of the observed similarity at ``threshold`` and ``linkage`` when the
            caller already has them, so the clustering is not run twice.
        baseline: the same layer's statistics in an untrained network of the same architecture on the same
            images (or a subset), with the same groups: every score gets its value there and the excess.
        rank99: also compute rank99 (eigendecompositions, O(C³) per layer).
        similarity: the observed C×C similarity of ``source`` in ``metric`` when the caller has it already
            (``channel_similarity(source.total(), metric).matrix``), so it is not computed twice.

    Scoring runs on the CPU in float64 whatever device the statistics are on (they are C×C matrices).
    """
    check_metric(metric)
    threshold = check_threshold(threshold)
    check_linkage(linkage)
    level = check_level(level)
    grouped = _as_grouped(source, groups, tol)
    _check_baseline(baseline, grouped)
    return score_layer(grouped, metric, threshold, level, linkage, layer, observed_groups, baseline, rank99,
                       similarity)[0]


def _check_baseline(baseline: Any, grouped: GroupedStats) -> None:
    """The untrained baseline must be the same layer's statistics with the same image groups and chunk, or
    its replicates would be paired with the wrong ones (its ``positions`` may differ)."""
    if baseline is None:
        return
    if not isinstance(baseline, GroupedStats):
        raise GhostmapsError(f"baseline must be the layer's GroupedStats in the untrained network (what survey "
                             f"accumulates), got {type(baseline).__name__}.")
    for name in ("channels", "groups", "chunk"):
        mine, theirs = getattr(grouped, name), getattr(baseline, name)
        if mine != theirs:
            raise GhostmapsError(f"baseline has {name}={theirs} but the observed statistics have {name}={mine}: "
                                 "the baseline must be the same layer, accumulated with the same groups and "
                                 "chunk (survey(..., baseline='untrained') does this).")


def score_layer(grouped: GroupedStats, metric: str, threshold: float, level: float, linkage: str,
                layer: str | None = None, observed_groups: GhostGroups | None = None,
                baseline: GroupedStats | None = None, rank99: bool = False, similarity: torch.Tensor | None = None,
                total: LayerStats | None = None) -> tuple[Redundancy, GhostGroups]:
    """``redundancy`` of checked settings, and the observed similarity's ghost groups (``observed_groups`` when
    given, else clustered here, with ``metric`` and ``layer``). ``total``: ``grouped.total()`` when the caller
    has it already (its Gram matrix is not changed)."""
    cpu = torch.device("cpu")
    given = grouped
    grouped = grouped if grouped.device == cpu else grouped.to("cpu")
    work = about_centre(grouped, metric)
    if total is None or work is not given or total.device != cpu:
        total = work.total()
    dead, constant = total.dead, total.constant
    valid = ~(dead | constant)
    v = int(valid.sum())
    notes: list[str] = []
    seen = observed_part(work, total, valid, metric, threshold, linkage, similarity, observed_groups, layer)
    observed, found = seen.scores, seen.groups
    nulled = null_part(work, total, valid, metric, threshold, linkage)
    null_t = None if nulled is None else nulled.scores
    if nulled is None:
        notes.append("no null: it needs at least one pair of images of one size (images 2j and 2j + 1)")
    reps = msq_replicates(work, metric, valid, observed=(seen.msq, None if nulled is None else nulled.msq))
    if len(reps.replicates) < 2:
        notes.append("no intervals and no sample-size correction (mean S² and the participation ratio are the raw "
                     "estimates, biased by the noise floor ≈ 1/n_eff): both need images in at least two image "
                     f"groups ({work.total_images} images, "
                     f"{len(work.filled_groups)} group(s) filled, groups={work.groups})")
    base_t = base_reps = None
    if baseline is not None:
        bwork = about_centre(baseline if baseline.device == cpu else baseline.to("cpu"), metric)
        bvalid, based = baseline_part(bwork, metric, threshold, linkage)
        base_t = based.scores
        base_reps = msq_replicates(bwork, metric, bvalid, null=False, observed=(based.msq, None))
    split = halves(work)
    half_t, agreement = None, None
    if split is not None:
        first, second = half_parts(work, split, valid, metric, threshold, linkage)
        half_t = (first.scores, second.scores)
        keep = valid.nonzero().flatten().tolist()
        agreement = adjusted_rand([first.groups.labels[i] for i in keep], [second.groups.labels[i] for i in keep])
    scores: dict[str, Score] = {}
    f = _pr(v)
    obs = _msq_interval(reps.observed, reps.replicates, reps.sizes, level)
    shown = tuple(None if x is None else min(max(x, 0.0), 1.0) for x in obs)
    null_msq = null_pr = Baseline()
    if reps.null is not None:
        nulls = reps.null_replicates if reps.null_replicates is not None else np.zeros(0)
        null = _msq_interval(reps.null, nulls, reps.sizes, level)
        r = correlation(reps.replicates, nulls)
        null_msq, null_pr = _excess(obs, null, r), _excess(obs, null, r, f)
    base_msq = base_pr = None
    if base_reps is not None:
        aligned = _aligned(reps, base_reps)
        base = _msq_interval(base_reps.observed, base_reps.replicates, base_reps.sizes, level)
        r = correlation(reps.replicates, aligned) if len(reps.replicates) else 0.0
        base_msq, base_pr = _excess(obs, base, r), _excess(obs, base, r, f)
    scores["mean_sq_similarity"] = Score(shown[0], shown[1], shown[2], null_msq, base_msq)
    scores["participation_ratio"] = Score(f(obs[0]), None if obs[2] is None else f(obs[2]),
                                          None if obs[1] is None else f(obs[1]), null_pr, base_pr)
    for name in (*THRESHOLD, "mean_abs_similarity"):
        value = observed[name]
        nv = None if null_t is None else null_t[name]
        bv = None if base_t is None else base_t[name]
        scores[name] = Score(value, None, None, Baseline(nv, None if nv is None else value - nv),
                             None if baseline is None else Baseline(bv, value - bv),
                             None if half_t is None or name == "mean_abs_similarity" else
                             [half_t[0][name], half_t[1][name]])
    if rank99:
        scores["rank99"] = _rank99(work, metric, valid, split, baseline, notes)
    return Redundancy(
        channels=int(total.channels), valid=v, dead=torch.nonzero(dead).flatten().tolist(),
        constant=torch.nonzero(constant).flatten().tolist(), images=total.images, metric=metric,
        threshold=float(threshold), scores=scores, level=level, interval_groups=len(reps.replicates),
        sparse=torch.nonzero(valid & (total.apoz >= SPARSE_APOZ)).flatten().tolist(), groups_agreement=agreement,
        estimated=grouped.estimated, baseline_images=None if baseline is None else baseline.total_images,
        layer=layer, notes=notes), found


def _rank99(work: GroupedStats, metric: str, valid: torch.Tensor, split: Any, baseline: GroupedStats | None,
            notes: list[str]) -> Score:
    """rank99 cross-validated between halves, for the observed statistics, the null and the baseline."""
    if split is None:
        notes.append("rank99 not corrected for sample size" + (" and not compared with the baseline" if baseline
                     is not None else "") + ": that needs images in at least two image groups")
        return Score(plain_rank99(observed_similarity(work.moments(), metric, valid), valid))
    half_sims = [observed_similarity(work.moments(s), metric, valid) for s in split]
    ab, ba = rank99_split(*half_sims, valid)
    value = (ab + ba) / 2
    nulls = [null_similarity(work.moments(s), metric, valid) for s in split]
    nv = None if any(x is None for x in nulls) else sum(rank99_split(*nulls, valid)) / 2
    untrained = None
    if baseline is not None:
        bwork = about_centre(baseline.to("cpu"), metric)
        bsplit = halves(bwork)
        bvalid = ~(bwork.total().dead | bwork.total().constant)
        if bsplit is not None:
            bv = sum(rank99_split(*(observed_similarity(bwork.moments(s), metric, bvalid) for s in bsplit),
                                  bvalid)) / 2
            untrained = Baseline(bv, value - bv)
        else:
            untrained = Baseline()
    return Score(value, None, None, Baseline(nv, None if nv is None else value - nv), untrained, [ab, ba])
