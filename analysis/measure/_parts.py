"""The parts of a layer's scores, each read from its own similarity matrix, built once (``_similarities``): the
observed statistics, the noise-matched null, the two split halves and the untrained baseline. Private to
``analysis.measure``; ``scores.redundancy`` assembles them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from analysis.measure._similarities import (
    Summary,
    about,
    half_moment,
    moments_centre,
    summarise_moment,
    summarise_similarity,
    threshold_summary,
)
from analysis.measure.groups import GhostGroups
from analysis.stats import GroupedStats, LayerStats


@dataclass
class Part:
    """One similarity matrix's threshold scores, its ghost groups and (when asked) its full-sample mean squared
    similarity over the valid pairs i < j."""

    scores: dict[str, float]
    groups: GhostGroups
    msq: float | None = None


def _mean_sq(s: Summary, gram_diagonal: torch.Tensor, valid: torch.Tensor) -> float:
    """Σ_{i≠j} S_ij² / (V (V − 1)) over the channels that are valid and have a positive Gram diagonal (those
    ``msq_replicates`` counts); 0 for fewer than two."""
    v = int((valid & (gram_diagonal > 0)).sum())
    return float(s.sum_sq) / (v * (v - 1)) if v > 1 else 0.0


def observed_part(work: GroupedStats, total: LayerStats, valid: torch.Tensor, metric: str, threshold: float,
                  linkage: str, similarity: torch.Tensor | None = None, groups: GhostGroups | None = None,
                  layer: str | None = None) -> Part:
    """The observed similarity's part (``similarity``: the caller's C×C matrix; ``groups``: its ghost groups)."""
    if similarity is None:
        sums, count, centre = moments_centre(work, None, metric)
        a, variance = about(total.gram.diagonal(), sums, count, centre)
        s = summarise_moment(total.gram, valid, variance, a, centre, sum_sq=True, clip=True)
    else:
        s = summarise_similarity(similarity.cpu(), valid, sum_sq=True)
    scores, found = threshold_summary(s, threshold, linkage, groups, metric=metric, layer=layer)
    return Part(scores, found, _mean_sq(s, total.gram.diagonal(), valid))


def null_part(work: GroupedStats, total: LayerStats, valid: torch.Tensor, metric: str, threshold: float,
              linkage: str) -> Part | None:
    """The noise-matched null's part (``_scoring.null_similarity``), None without image pairs. Its mean square
    is of the null similarity as the threshold scores read it, unclipped."""
    pair_count = float(work.pair_count.sum())
    if pair_count <= 0:
        return None
    sums, count, centre = moments_centre(work, None, metric)
    _, variance = about(total.gram.diagonal(), sums, count, centre)
    a = work.pair_sums.sum(0) - (pair_count / 2) * centre
    s = summarise_moment(work.cross, valid, variance, a, centre, factor=count / pair_count, sum_sq=True, clip=True,
                         upper=True)
    scores, found = threshold_summary(s, threshold, linkage)
    return Part(scores, found, _mean_sq(s, total.gram.diagonal(), valid))


def half_parts(work: GroupedStats, split: tuple[list[int], list[int]], valid: torch.Tensor, metric: str,
               threshold: float, linkage: str) -> tuple[Part, Part]:
    """The two halves' parts (each half's similarity about its own centre, as ``GroupedStats.moments(half)``)."""
    idx = torch.nonzero(valid).flatten()
    out, first = [], None
    for half in split:  # the second half is the total minus the first (split partitions the filled groups)
        sums, count, centre = moments_centre(work, half, metric)
        moment, diagonal, first = half_moment(work, half, idx, first)
        a, variance = about(diagonal, sums, count, centre)
        s = summarise_moment(moment, valid, variance, a, centre, owned=True, abs_sum=False)
        scores, found = threshold_summary(s, threshold, linkage)
        out.append(Part(scores, found))
    return out[0], out[1]


def baseline_part(bwork: GroupedStats, metric: str, threshold: float, linkage: str
                  ) -> tuple[torch.Tensor, Part]:
    """(valid channels, part) of the untrained baseline's statistics (about the metric's centre)."""
    btotal = bwork.total()
    bvalid = ~(btotal.dead | btotal.constant)
    sums, count, centre = moments_centre(bwork, None, metric)
    diagonal = btotal.gram.diagonal().clone()
    a, variance = about(diagonal, sums, count, centre)
    s = summarise_moment(btotal.gram, bvalid, variance, a, centre, owned=True, sum_sq=True, clip=True)
    scores, found = threshold_summary(s, threshold, linkage)
    return bvalid, Part(scores, found, _mean_sq(s, diagonal, bvalid))
