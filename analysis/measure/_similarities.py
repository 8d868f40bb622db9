"""The scores' similarity matrices on the valid channels, each built once, and everything the threshold scores
and the mean squares read from one of them. Private to ``analysis.measure``; inputs are checked by
``redundancy``.

``_scoring.observed_similarity`` and ``null_similarity`` give the full C×C matrices (the reference forms the
tests check). The scores only read S on the V valid channels, so here S = diag(r)·X with X the moment on those
channels written once, column-scaled (one copy or gather and one pass, or one pass straight from an accumulator
whose upper row blocks are whole), centred by one rank-2 update when its centre is not already the statistics'
shift; then read-only row norms of X give, times r, the row maxima of |S| (ghost fraction, the channels to
cluster), Σ |S| and Σ S². Only the channels with a partner at τ get their |S| block copied for the clustering.
The values agree with the reference forms to float64 rounding (a few ulps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from analysis.measure.groups import GhostGroups, grouped
from analysis.stats import GroupedStats
from analysis.stats._kernel import _mirror, _row_blocks
from analysis.stats._live import block_layout, from_blocks, group_sum


@dataclass
class Summary:
    """What the scores read of one similarity S on the valid channels ``idx`` (of ``channels``), with
    S_ij = scale_i · matrix_ij (``matrix`` V×V, 0 on its diagonal): per valid channel max_{j≠i} |S_ij|
    (``rowmax``), Σ_{i≠j} |S_ij| with |S| clipped at 1 (``abs_sum``) and Σ_{i≠j} S_ij² (``sum_sq``), the last
    two when asked for."""

    matrix: torch.Tensor
    scale: torch.Tensor
    idx: torch.Tensor
    channels: int
    rowmax: torch.Tensor
    abs_sum: float | None = None
    sum_sq: float | None = None

    def block(self, rows: torch.Tensor) -> torch.Tensor:
        """|S| among the listed valid channels (positions in ``idx``), a new L×L tensor."""
        return self.matrix[rows.unsqueeze(1), rows].abs_().mul_(self.scale[rows].view(-1, 1))


def _summary(m: torch.Tensor, scale: torch.Tensor, idx: torch.Tensor, channels: int, abs_sum: bool,
             sum_sq: bool, clip: bool) -> Summary:
    """Row reductions of S = diag(scale)·m (``m`` with a zero diagonal), read-only passes over ``m``. ``clip``:
    |S| may exceed 1 (beyond rounding), and Σ |S| then clips it as the reference forms do."""
    norm = torch.linalg.vector_norm
    if not m.numel():
        empty = torch.zeros(0, dtype=torch.float64)
        return Summary(m, scale, idx, channels, empty, 0.0 if abs_sum else None, 0.0 if sum_sq else None)
    rowmax = norm(m, float("inf"), dim=1).mul_(scale)
    total = float(torch.dot(norm(m, 1, dim=1), scale)) if abs_sum else None
    if total is not None and clip and bool((rowmax > 1.0).any()):
        total = float((m * scale.view(-1, 1)).abs_().clamp_max_(1.0).sum())
    sq = float(torch.dot(norm(m, 2, dim=1).square_(), scale.square())) if sum_sq else None
    return Summary(m, scale, idx, channels, rowmax, total, sq)


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


def summarise_moment(moment: torch.Tensor, valid: torch.Tensor, variance: torch.Tensor, a: torch.Tensor,
                     centre: torch.Tensor, factor: float = 1.0, owned: bool = False, abs_sum: bool = True,
                     sum_sq: bool = False, clip: bool = False, upper: bool = False) -> Summary:
    """``Summary`` of S_ij = factor · M̃_ij / √(v_i v_j) on the valid channels, M̃ = M − (a cᵀ + c aᵀ) the
    symmetric ``moment`` about ``centre`` (``about``), v = ``variance`` (S = 0 where v ≤ 0). ``moment`` is C×C,
    or V×V on the valid channels already; ``owned``: it may be overwritten (a V×V one is then not copied);
    ``upper``: a C×C accumulator of which only the upper row blocks are whole (``_mirror``'s input)."""
    c = valid.numel()
    idx = torch.nonzero(valid).flatten()
    var = variance[idx]
    inv = torch.where(var > 0, 1.0 / var.clamp_min(1e-300).sqrt(), torch.zeros_like(var))
    if moment.shape[0] != idx.numel():
        whole = _mirror(moment) if upper else moment
        sub = whole[idx.unsqueeze(1), idx].mul_(inv.view(1, -1))
    elif upper:
        sub = torch.mul(moment, inv.view(1, -1))  # the copy and the column scaling in one pass
        edges = _row_blocks(c)
        for lo, hi in zip(edges[:-2], edges[1:-1], strict=True):  # the blocks below from those above
            torch.mul(moment[lo:hi, hi:].T, inv[lo:hi].view(1, -1), out=sub[hi:, lo:hi])
    else:
        sub = (moment if owned else moment.clone()).mul_(inv.view(1, -1))
    if sub.numel():
        ai, ci = a[idx], centre[idx]
        # the centring moves an entry of S by at most 2 max|a| max|c| / min v: skipped far below rounding
        if float(ai.abs().max() * ci.abs().max() * inv.max().square()) > 1e-18:
            sub.addmm_(torch.stack([ai, ci], 1), torch.stack([ci * inv, ai * inv]), alpha=-1.0)
        sub.fill_diagonal_(0.0)
    return _summary(sub, inv * factor, idx, c, abs_sum, sum_sq, clip)


def summarise_similarity(similarity: torch.Tensor, valid: torch.Tensor, sum_sq: bool = False) -> Summary:
    """``Summary`` of a ready C×C similarity matrix. It is read in place (its diagonal zeroed for the reductions
    and put back) when it is a float64 matrix outside autograd with every channel valid, else copied."""
    c = similarity.shape[0]
    idx = torch.nonzero(valid).flatten()
    ones = torch.ones(idx.numel(), dtype=torch.float64)
    if idx.numel() != c:
        sub = similarity[idx.unsqueeze(1), idx].to(torch.float64)
    elif similarity.dtype != torch.float64 or similarity.requires_grad or not similarity.is_contiguous():
        sub = similarity.detach().to(torch.float64, copy=True).contiguous()
    else:
        diagonal = similarity.diagonal().clone()
        similarity.fill_diagonal_(0.0)
        try:
            return _summary(similarity, ones, idx, c, True, sum_sq, False)
        finally:
            similarity.diagonal().copy_(diagonal)
    sub.fill_diagonal_(0.0)
    return _summary(sub, ones, idx, c, True, sum_sq, False)


def threshold_summary(s: Summary, threshold: float, linkage: str, groups: GhostGroups | None = None,
                      metric: str | None = None, layer: str | None = None) -> tuple[dict[str, float], GhostGroups]:
    """ghost_fraction, groups, ratio and mean_abs_similarity (0 without ``abs_sum``) of one similarity
    (``_scoring.threshold_scores``), and its ghost groups (``groups`` when given, else clustered here, with
    ``metric`` and ``layer``)."""
    v = int(s.idx.numel())
    linked = torch.zeros(v, dtype=torch.bool)
    fraction = average = 0.0
    if v > 1:
        linked = s.rowmax >= threshold - 1e-12
        fraction = float(linked.double().mean())
        average = s.abs_sum / (v * (v - 1)) if s.abs_sum is not None else 0.0
    if groups is None:
        rows = torch.nonzero(linked).flatten()
        part = s.block(rows).numpy() if rows.numel() else None
        groups = grouped(part, linked.numpy(), s.idx.numpy(), s.channels, float(threshold), linkage, metric, layer)
    n = groups.count
    return {"ghost_fraction": fraction, "groups": float(n), "ratio": s.channels / max(n, 1),
            "mean_abs_similarity": average}, groups


def half_moment(stats: GroupedStats, groups: list[int], idx: torch.Tensor, other: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the float64 Gram matrix of the listed groups on the channels ``idx``, V×V and new; its full diagonal, C;
    the full C×C matrix): the group vectors summed in float64 in group order (the sum
    ``GroupedStats.moments(groups)`` makes) and mirrored from their row blocks. ``other``: the full matrix of
    the complementary groups, when the listed ones are all the rest; then this half is the float64 total minus
    it (one sum of the group vectors per split, not two; equal up to the float32 rounding of the vectors)."""
    if other is None:
        full = from_blocks(group_sum(stats.group_gram, groups), block_layout(stats.channels))
    else:
        full = _mirror(stats.gram).sub_(other)
    diagonal = full.diagonal().clone()
    if idx.numel() != stats.channels:
        part = full.index_select(0, idx).index_select(1, idx)
    else:  # the caller may change the V×V matrix in place; the full one is kept for the other half
        part = full.clone() if other is None else full
    return part, diagonal, full


def moments_centre(stats: GroupedStats, groups: list[int] | None, metric: str
                   ) -> tuple[torch.Tensor, float, torch.Tensor]:
    """(Σ y, positions, centre) of all images or of the listed groups."""
    if groups is None:
        sums, count = stats.sums.sum(0), float(stats.count.sum())
    else:
        sums, count = stats.sums[groups].sum(0), float(stats.count[groups].sum())
    return sums, count, centre_of(sums, count, stats.shift, metric)


__all__ = ["Summary", "about", "centre_of", "half_moment", "moments_centre", "summarise_moment",
           "summarise_similarity", "threshold_summary"]
