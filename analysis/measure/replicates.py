"""Jackknife replicates of the mean squared similarity, observed and noise-matched null, from the group vectors
of ``GroupedStats`` (row-block layout, :mod:`analysis.stats._live`) in three passes over each.

With the statistics about the metric's centre (the mean for Pearson, zero for cosine), G the pooled Gram and
gₖ group k's part, the replicate without group k has the similarity (G − gₖ)ᵢⱼ / √((G − gₖ)ᵢᵢ (G − gₖ)ⱼⱼ):
with u = 1/diag(G − gₖ) on the V valid channels (0 elsewhere) and X = (G − gₖ)∘(G − gₖ),

    Σ_{i<j} S₋ₖ,ᵢⱼ² = (uᵀ X u − Σᵢ uᵢ² Xᵢᵢ) / 2,

one subtraction, one square and one symmetric matrix-vector product per group (two matrix-vector products
per row block, reading the vector as it is stored: ``analysis.stats._live.quadratic``). The null is the same
with the cross products H and hₖ, scaled by (positions / paired positions)² and normalised by the same
observed variances. Exact, no linearisation; the
replicates are centred on the full sample's centre (the replicate's own mean differs by O(1/n²)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from analysis.stats import GroupedStats, PairedMoments
from analysis.stats._live import block_layout, diagonal_index, quadratic, to_blocks

__all__ = ["MsqReplicates", "msq_replicates"]


@dataclass
class MsqReplicates:
    """Mean squared similarity over valid pairs i < j: on all images and without each filled group."""

    observed: float
    null: float | None
    replicates: np.ndarray
    null_replicates: np.ndarray | None
    sizes: np.ndarray
    groups: list[int]


def about_centre(stats: GroupedStats, metric: str) -> GroupedStats:
    """``stats`` itself when its shift is already the metric's centre (what ``survey`` stores for Pearson),
    else a copy moved there (exact float64 algebra; float32 group vectors re-rounded)."""
    count = float(stats.count.sum())
    sums = stats.sums.sum(0)  # the centre and the scale need no C×C matrix
    centre = sums / max(count, 1.0) if metric == "pearson" else -stats.shift
    scale = (stats.gram.diagonal().clamp_min(0) / max(count, 1.0)).sqrt().clamp_min(1e-300)
    if bool((centre.abs() <= 1e-9 * scale).all()):
        return stats
    return stats.with_shift(stats.shift + centre)


def _msq(matrix: torch.Tensor, valid: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(mean over valid i < j of matrix_ij², per-channel Σ_{j≠i} matrix_ij²) of a similarity-like matrix."""
    v = int(valid.sum())
    sq = matrix.square() * torch.outer(valid, valid).to(matrix.dtype)
    sq.diagonal().zero_()
    rows = sq.sum(1)
    return (float(rows.sum()) / (v * (v - 1)) if v > 1 else 0.0), rows


def msq_replicates(stats: GroupedStats, metric: str, valid: torch.Tensor, null: bool = True,
                   moments: PairedMoments | None = None, observed: tuple[float, float | None] | None = None
                   ) -> MsqReplicates:
    """Mean squared similarity and its jackknife replicates (formulas: module docstring). ``stats`` must be
    about the metric's centre (``about_centre``); ``valid`` is the mask of channels that take part;
    ``moments``: ``stats.moments()`` when the caller has it already; ``observed``: the full-sample (observed,
    null) values when the caller has them already (from the similarity matrices, ``_similarities``)."""
    valid = valid.cpu()
    d = stats.gram.diagonal().cpu().clone()  # the accumulators' diagonal and upper triangle are whole
    ok = valid & (d > 0)
    v = int(ok.sum())
    count, pair_count = float(stats.count.sum()), float(stats.pair_count.sum())
    has_null = null and pair_count > 0
    if observed is None:
        m = stats.moments() if moments is None else moments
        u = torch.where(ok, 1.0 / d.clamp_min(1e-300), torch.zeros_like(d))
        root = torch.outer(u, u).sqrt()
        value, _ = _msq(m.gram.cpu() * root, ok)
        null_value = _msq(m.cross.cpu() * root * (count / pair_count), ok)[0] if has_null else None
    else:
        value, null_value = observed[0], observed[1] if has_null else None
    groups = stats.filled_groups
    sizes = stats.images[groups].double().cpu().numpy() if groups else np.zeros(0)
    if stats.group_gram is None or len(groups) < 2 or v < 2:
        return MsqReplicates(value, null_value, np.zeros(0), None, sizes, groups)
    c = stats.channels
    layout = block_layout(c)
    okn = ok.numpy()
    diag_at = diagonal_index(c).numpy()  # where (i, i) sits in a group vector
    full = to_blocks(stats.gram.cpu(), layout).float().numpy()  # the totals in the groups' layout
    full_null = to_blocks(stats.cross.cpu(), layout).float().numpy() if has_null else None
    d_np = d.numpy()
    counts = stats.count.double().cpu().numpy()
    pair_counts = stats.pair_count.double().cpu().numpy()
    group_gram = stats.group_gram.cpu().numpy()
    group_cross = stats.group_cross.cpu().numpy() if has_null else None
    buf = np.empty_like(full)
    reps, null_reps = np.empty(len(groups)), np.empty(len(groups))
    pairs = v * (v - 1)
    for n, g in enumerate(groups):
        vec = group_gram[g]
        np.subtract(full, vec, out=buf)
        left = d_np - vec[diag_at].astype(np.float64)  # the replicate's variances (× positions)
        uk = np.where(okn, 1.0 / np.clip(left, 1e-300, None), 0.0)
        uk32 = uk.astype(np.float32)
        uk2 = uk ** 2
        np.square(buf, out=buf)
        reps[n] = (quadratic(buf, uk32, layout) - float((uk2 * buf[diag_at]).sum())) / pairs
        if has_null:
            np.subtract(full_null, group_cross[g], out=buf)
            np.square(buf, out=buf)
            paired = pair_count - float(pair_counts[g])
            scale = ((count - float(counts[g])) / paired) ** 2 if paired > 0 else 0.0
            null_reps[n] = scale * (quadratic(buf, uk32, layout) - float((uk2 * buf[diag_at]).sum())) / pairs
    return MsqReplicates(value, null_value, reps, null_reps if has_null else None, sizes, groups)
