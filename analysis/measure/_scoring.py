"""Kernels of the redundancy scores: similarity matrices from moments (observed and noise-matched null), the
threshold scores of one matrix, split halves, and the split-half (cross-validated) rank99. Private to
``analysis.measure``; inputs are checked by ``analysis.measure.scores.redundancy``."""

from __future__ import annotations

import torch

from analysis.measure.groups import GhostGroups, ghost_groups
from analysis.stats import GroupedStats, PairedMoments, normalised_moment

RANK_LEVEL = 0.99


def observed_similarity(moments: PairedMoments, metric: str, valid: torch.Tensor) -> torch.Tensor:
    """The C×C similarity of the pooled moments (Pearson or cosine), 0 outside ``valid``, 1 on its diagonal."""
    return normalised_moment(moments.centred_gram(metric), valid)


def null_similarity(moments: PairedMoments, metric: str, valid: torch.Tensor) -> torch.Tensor | None:
    """The noise-matched null's similarity: each channel of an image against each channel of its pair partner,
    (H/paired positions) / √(G_ii G_jj / positions²), with each channel's observed variance (diagonal 1)."""
    if moments.pair_count <= 0:
        return None
    gram, cross = moments.centred(metric)
    d = gram.diagonal().clamp_min(0)
    ok = valid.to(d.device) & (d > 0)
    norm = torch.where(ok, d.sqrt(), torch.ones_like(d))
    sim = cross * (moments.count / moments.pair_count)
    sim.div_(torch.outer(norm, norm))
    if not bool(ok.all()):
        sim.masked_fill_(~torch.outer(ok, ok), 0.0)  # rows and columns of channels without a similarity
    sim.clamp_(-1.0, 1.0)
    sim.diagonal().copy_(ok.to(sim.dtype))
    return sim


def threshold_scores(similarity: torch.Tensor, valid: torch.Tensor, threshold: float, linkage: str,
                     groups: GhostGroups | None = None) -> tuple[dict[str, float], GhostGroups]:
    """ghost_fraction, groups, ratio and mean_abs_similarity of one similarity matrix (formulas: ``scores``)."""
    sim = similarity.detach().cpu().to(torch.float64)
    valid = valid.detach().cpu().bool()
    c = sim.shape[0]
    idx = torch.nonzero(valid).flatten()
    v = int(idx.numel())
    sub = sim.abs() if v == c else sim[idx][:, idx].abs()  # every channel valid: no gathered copy
    if v > 1:
        diagonal = sub.diagonal().clone()
        sub.fill_diagonal_(-1.0)
        fraction = float((sub.max(dim=1).values >= threshold - 1e-12).double().mean())
        sub.diagonal().copy_(diagonal)
        # mean over i < j of a symmetric matrix: (total − trace) / (v (v − 1)), no index tensors
        mean_abs = float((sub.sum() - diagonal.sum()) / (v * (v - 1)))
    else:
        fraction = mean_abs = 0.0
    if groups is None:
        groups = ghost_groups(sim, threshold, linkage, valid=valid)
    n = groups.count
    return {"ghost_fraction": fraction, "groups": float(n), "ratio": c / max(n, 1),
            "mean_abs_similarity": mean_abs}, groups


def halves(stats: GroupedStats) -> tuple[list[int], list[int]] | None:
    """The filled groups dealt alternately into two halves (None with fewer than two filled groups)."""
    filled = stats.filled_groups
    if stats.group_gram is None or len(filled) < 2:
        return None
    return filled[0::2], filled[1::2]


def _rank(cumulative: torch.Tensor, v: int) -> float:
    return float(min(int(torch.searchsorted(cumulative, torch.tensor([RANK_LEVEL - 1e-12],
                                                                      dtype=cumulative.dtype)).item()) + 1, v))


def rank99_split(first: torch.Tensor, second: torch.Tensor, valid: torch.Tensor) -> tuple[float, float]:
    """rank99 corrected for sample size by cross-validation: the eigenvectors of one half's similarity, ordered
    by its eigenvalues, and the variance the *other* half shows along them (which noise cannot inflate); the
    smallest k whose first k directions hold 99% of the other half's total. Returns (A→B, B→A)."""
    idx = torch.nonzero(valid.cpu()).flatten()
    v = int(idx.numel())
    if v == 0:
        return 0.0, 0.0
    out = []
    for a, b in ((first, second), (second, first)):
        sa = a.cpu().double()[idx][:, idx]
        sb = b.cpu().double()[idx][:, idx]
        _, vectors = torch.linalg.eigh(sa)
        vectors = vectors.flip(1)  # descending eigenvalues of the first half
        held = ((sb @ vectors) * vectors).sum(0).clamp_min(0)  # vₖᵀ S_B vₖ
        out.append(_rank(torch.cumsum(held, 0) / held.sum().clamp_min(1e-300), v))
    return out[0], out[1]


def plain_rank99(similarity: torch.Tensor, valid: torch.Tensor) -> float:
    """rank99 of one similarity matrix's eigenvalues (uncorrected: biased low when C exceeds the effective
    number of samples)."""
    idx = torch.nonzero(valid.cpu()).flatten()
    v = int(idx.numel())
    if v == 0:
        return 0.0
    lam = torch.linalg.eigvalsh(similarity.cpu().double()[idx][:, idx]).clamp_min(0).flip(0)
    return _rank(torch.cumsum(lam, 0) / lam.sum().clamp_min(1e-300), v)
