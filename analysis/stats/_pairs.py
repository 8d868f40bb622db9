"""The identity behind the paired fold (the Gram matrix and the noise-matched null from one set of products),
the packed per-group storage, and the kernels that work on it. Private to ``analysis.stats``; shapes are checked by the callers.

Images are paired in stream order, (2j, 2j + 1). For a pair with shifted maps y_a, y_b (C×P each) the
observed Gram matrix needs y_a y_aᵀ + y_b y_bᵀ and the null needs the symmetric cross product
y_a y_bᵀ + y_b y_aᵀ. With u = y_a + y_b and v = y_a − y_b,

    u uᵀ = y_a y_aᵀ + y_b y_bᵀ + (y_a y_bᵀ + y_b y_aᵀ),   v vᵀ = y_a y_aᵀ + y_b y_bᵀ − (y_a y_bᵀ + y_b y_aᵀ),

so Gram = (u uᵀ + v vᵀ) / 2 and cross = (u uᵀ − v vᵀ) / 2: two symmetric products per pair, exactly the
work of the two Gram products alone. The null costs nothing beyond the elementwise u and v. (The streaming
accumulators of :mod:`analysis.stats._live` keep the two products themselves.)

A group's two matrices are symmetric, so each is kept as its upper triangle with the diagonal in row-major
order (``triu`` order, C(C + 1)/2 values; the null's diagonal is kept but never used, each channel keeps its
observed variance). That is half of two C×C matrices, the jackknife reads them as contiguous vectors, and the
order is BLAS's packed lower storage of a symmetric matrix (``spmv``).
"""

from __future__ import annotations

from functools import lru_cache

import torch

from analysis.stats._kernel import _row_blocks


@lru_cache(maxsize=64)
def _triu_index(c: int, offset: int, device: str) -> torch.Tensor:
    """Flat indices (row·C + col) of the upper triangle (col ≥ row + offset) in row-major order."""
    i, j = torch.triu_indices(c, c, offset=offset, device=device)
    return (i * c + j).contiguous()


def triu_index(c: int, offset: int, device: torch.device) -> torch.Tensor:
    return _triu_index(int(c), int(offset), str(device))


def packed_size(c: int, offset: int) -> int:
    """Values of the upper triangle of a C×C matrix from diagonal ``offset`` (0 with the diagonal, 1 without)."""
    n = c - offset
    return n * (n + 1) // 2


def pack(full: torch.Tensor, offset: int) -> torch.Tensor:
    """The upper triangle (from ``offset``) of a C×C matrix (or of each of a stack …×C×C) in triu order."""
    c = full.shape[-1]
    return full.reshape(*full.shape[:-2], c * c).index_select(-1, triu_index(c, offset, full.device))


def unpack(packed: torch.Tensor, c: int, offset: int, diagonal: torch.Tensor | None = None) -> torch.Tensor:
    """The symmetric C×C matrix whose upper triangle (from ``offset``) is ``packed``; with offset 1 the diagonal
    is ``diagonal`` (default 0)."""
    idx = triu_index(c, offset, packed.device)
    flat = torch.zeros(c * c, dtype=packed.dtype, device=packed.device)
    flat.index_copy_(0, idx, packed)
    full = flat.view(c, c)
    out = full + full.T
    if offset == 0:
        out.diagonal().mul_(0.5)
    elif diagonal is not None:
        out.diagonal().copy_(diagonal.to(out.dtype))
    return out


@lru_cache(maxsize=64)
def _triu_rows_cols(c: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    i, j = torch.triu_indices(c, c, offset=0, device=device)
    return i.contiguous(), j.contiguous()


def reshift_packed(packed: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor, delta: torch.Tensor,
                   block: int = 4) -> None:
    """Move K packed group Gram matrices (K × C(C + 1)/2, triu order, any float dtype) to another shift, in
    place: group k gains δ sₖᵀ + sₖ δᵀ + nₖ δ δᵀ = δ wₖᵀ + wₖ δᵀ with wₖ = sₖ + (nₖ/2) δ (``sums`` K×C float64,
    ``counts`` K positions, δ = old shift − new shift), on the packed entries only, a few groups at a time.
    wₖ and δ are formed in float64, the products in the packed dtype: the correction is small next to the
    entries (δ is the first batch's mean minus the mean), so its own rounding is below theirs."""
    c = delta.numel()
    rows, cols = _triu_rows_cols(c, str(packed.device))
    w = sums.to(torch.float64) + (counts.to(torch.float64) / 2).view(-1, 1) * delta.view(1, -1)
    w, delta = w.to(packed.dtype), delta.to(packed.dtype)
    d_rows, d_cols = delta[rows], delta[cols]
    for lo in range(0, packed.shape[0], block):
        wk = w[lo:lo + block]
        chunk = packed[lo:lo + block]
        chunk.addcmul_(wk[:, cols], d_rows)
        chunk.addcmul_(wk[:, rows], d_cols)


@lru_cache(maxsize=256)
def _block_index(rows: int, cols: int, offset: int, device: str) -> torch.Tensor:
    i, j = torch.triu_indices(rows, cols, offset=offset, device=device)
    return (i * cols + j).contiguous()


def _segment_start(c: int, lo: int, offset: int) -> int:
    """Where row ``lo`` starts in the triu-order vector of a C×C matrix (from diagonal ``offset``)."""
    return lo * (c - offset) - lo * (lo - 1) // 2


def fold_cross(ya: torch.Tensor, yb: torch.Tensor, cross: torch.Tensor, group_cross: torch.Tensor | None) -> None:
    """Add the cross product ya ybᵀ + yb yaᵀ of one pair whose images arrived in different batches (C×P each;
    their Gram terms were added when each arrived)."""
    a = torch.mm(ya, yb.T).to(torch.float64)
    h = a + a.T
    _add_upper(cross, h)
    if group_cross is not None:
        group_cross += pack(h, 0).to(group_cross.dtype)


def _add_upper(total: torch.Tensor, full: torch.Tensor) -> None:
    """Add ``full``'s upper row blocks to an accumulator that keeps only those (``_mirror`` fills the rest)."""
    edges = _row_blocks(total.shape[-1])
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        total[lo:hi, lo:] += full[lo:hi, lo:]
