"""The scores' similarity matrices on the valid channels, each built once and in place, and everything the
threshold scores read from one of them. Private to ``analysis.measure``; inputs are checked by ``redundancy``.

``_scoring.observed_similarity`` and ``null_similarity`` give the full C×C matrices (the reference forms the
tests check). The scores only read |S| on the V valid channels, so here that V×V matrix is made from the moment
with one copy (or gather) and in-place passes: centre (two rank-one updates, skipped when the centre is
already the statistics' shift), scale rows then columns, |·| clipped to 1; then reductions only (Σ S², the row
maxima, Σ |S|) and the clustering of the few channels with a partner at τ. The values agree with the reference
forms to float64 rounding (a few ulps)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from analysis.measure.groups import GhostGroups, grouped
from analysis.stats import GroupedStats


@dataclass
class AbsSimilarity:
    """|S| on the valid channels ``idx`` (of ``channels``): V×V float64, 0 on the diagonal, at most 1; ``sum_sq``
    is Σ_{i≠j} S_ij² before the clipping (None when not asked for)."""

    absolute: torch.Tensor
    idx: torch.Tensor
    channels: int
    sum_sq: float | None = None


def centre_of(sums: torch.Tensor, count: float, shift: torch.Tensor, metric: str) -> torch.Tensor:
    """The point (in shifted units) the metric measures about: the mean (Pearson) or zero (cosine)."""
    return sums / max(count, 1.0) if metric == "pearson" else -shift


def about(moment_diagonal: torch.Tensor, sums: torch.Tensor, count: float, centre: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, diagonal about c): a = s − (n/2) c, so that the moment about c is M − (a cᵀ + c aᵀ), and that moment's
    diagonal M_ii − 2 a_i c_i (as ``PairedMoments.centred`` rounds it)."""
    a = sums - (count / 2) * centre
    r = a * centre
    return a, moment_diagonal - (r + r)


def abs_similarity(moment: torch.Tensor, valid: torch.Tensor, variance: torch.Tensor, a: torch.Tensor,
                   centre: torch.Tensor, factor: float = 1.0, owned: bool = False, sum_sq: bool = False
                   ) -> AbsSimilarity:
    """|S| on the valid channels of S_ij = factor · M̃_ij / √(v_i v_j), M̃ = M − (a cᵀ + c aᵀ) the symmetric C×C
    ``moment`` about ``centre`` (``about``), v = ``variance`` (0 where v ≤ 0). ``moment`` is C×C, or V×V on the
    valid channels already; ``owned``: it may be overwritten (then no copy is made of a V×V one)."""
    c = valid.numel()
    idx = torch.nonzero(valid).flatten()
    if moment.shape[0] == idx.numel():
        sub = moment if owned else moment.clone()
    else:
        sub = moment[idx.unsqueeze(1), idx]
    var = variance[idx]
    ok = var > 0
    inv = torch.where(ok, 1.0 / var.clamp_min(1e-300).sqrt(), torch.zeros_like(var))
    if sub.numel():
        ai, ci = a[idx], centre[idx]
        # the centring moves an entry by at most 2 max|a| max|c| / min v: skipped when that is far below rounding
        if float(ai.abs().max() * ci.abs().max() * inv.max().square()) > 1e-18:
            sub.addr_(ai, ci, alpha=-1.0).addr_(ci, ai, alpha=-1.0)
        sub.mul_((inv * factor).view(-1, 1)).mul_(inv.view(1, -1))
    sub.fill_diagonal_(0.0)
    sq = float(torch.dot(sub.view(-1), sub.view(-1))) if sum_sq else None
    sub.abs_().clamp_max_(1.0)
    return AbsSimilarity(sub, idx, c, sq)


def abs_of(similarity: torch.Tensor, valid: torch.Tensor, sum_sq: bool = False) -> AbsSimilarity:
    """``AbsSimilarity`` of a ready C×C similarity matrix (a copy; ``similarity`` is not changed)."""
    c = similarity.shape[0]
    idx = torch.nonzero(valid).flatten()
    sub = similarity.to(torch.float64, copy=True) if idx.numel() == c else \
        similarity[idx.unsqueeze(1), idx].to(torch.float64)
    sub.fill_diagonal_(0.0)
    sq = float(torch.dot(sub.view(-1), sub.view(-1))) if sum_sq else None
    sub.abs_().clamp_max_(1.0)
    return AbsSimilarity(sub, idx, c, sq)


def threshold_summary(s: AbsSimilarity, threshold: float, linkage: str, groups: GhostGroups | None = None,
                      mean_abs: bool = True, metric: str | None = None, layer: str | None = None
                      ) -> tuple[dict[str, float], GhostGroups]:
    """ghost_fraction, groups, ratio and mean_abs_similarity of one |S| (``_scoring.threshold_scores``), and the
    ghost groups (``groups`` when given, else clustered here with ``metric`` and ``layer``)."""
    v = int(s.idx.numel())
    linked = torch.zeros(v, dtype=torch.bool)
    fraction = average = 0.0
    if v > 1:
        linked = s.absolute.amax(dim=1) >= threshold - 1e-12
        fraction = float(linked.double().mean())
        average = float(s.absolute.sum()) / (v * (v - 1)) if mean_abs else 0.0
    if groups is None:
        groups = grouped(s.absolute, linked.numpy(), s.idx.numpy(), s.channels, float(threshold), linkage, metric,
                         layer)
    n = groups.count
    return {"ghost_fraction": fraction, "groups": float(n), "ratio": s.channels / max(n, 1),
            "mean_abs_similarity": average}, groups


@lru_cache(maxsize=16)
def _unpack_index(c: int) -> torch.Tensor:
    """For each (i, j) of a C×C matrix, where (min(i, j), max(i, j)) sits in the triu-order vector (int32)."""
    i = np.arange(c, dtype=np.int32)
    index = np.add.outer(i * c - i * (i - 1) // 2 - i, i)  # right above the diagonal
    np.copyto(index, index.T.copy(), where=np.tri(c, k=-1, dtype=bool))  # and its mirror below
    return torch.from_numpy(index)


def half_moment(stats: GroupedStats, groups: list[int], idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the float64 Gram matrix of the listed groups on the channels ``idx``, V×V and new; its full diagonal, C):
    the group vectors summed in float64 in group order (the sum ``GroupedStats.moments(groups)`` makes, bit for
    bit, without the copy of the group vectors) and unpacked with one gather."""
    gg = stats.group_gram
    packed = gg[groups[0]].double()
    for g in groups[1:]:
        packed += gg[g]
    c = stats.channels
    index = _unpack_index(c)
    diagonal = packed.index_select(0, index.diagonal().long())
    if idx.numel() != c:
        index = index[idx.unsqueeze(1), idx]
    return packed.index_select(0, index.reshape(-1)).view(index.shape), diagonal


def moments_centre(stats: GroupedStats, groups: list[int] | None, metric: str
                   ) -> tuple[torch.Tensor, float, torch.Tensor]:
    """(Σ y, positions, centre) of all images or of the listed groups."""
    if groups is None:
        sums, count = stats.sums.sum(0), float(stats.count.sum())
    else:
        sums, count = stats.sums[groups].sum(0), float(stats.count[groups].sum())
    return sums, count, centre_of(sums, count, stats.shift, metric)


__all__ = ["AbsSimilarity", "abs_of", "abs_similarity", "about", "centre_of", "half_moment", "moments_centre",
           "threshold_summary"]
