"""The identity behind the paired fold, and the small kernels of the pairs. Private to ``analysis.stats``.

Images are paired in stream order, (2j, 2j + 1). For a pair with shifted maps y_a, y_b (C×P each) the
observed Gram matrix needs y_a y_aᵀ + y_b y_bᵀ and the null needs the symmetric cross product
y_a y_bᵀ + y_b y_aᵀ. With u = y_a + y_b and v = y_a − y_b,

    u uᵀ = y_a y_aᵀ + y_b y_bᵀ + (y_a y_bᵀ + y_b y_aᵀ),   v vᵀ = y_a y_aᵀ + y_b y_bᵀ − (y_a y_bᵀ + y_b y_aᵀ),

so Gram = (u uᵀ + v vᵀ) / 2 and cross = (u uᵀ − v vᵀ) / 2: two symmetric products per pair, exactly the
work of the two Gram products alone. The null costs nothing beyond the elementwise u and v. The streaming
accumulators of :mod:`analysis.stats._live` keep the two products themselves.
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


def _add_upper(total: torch.Tensor, full: torch.Tensor) -> None:
    """Add ``full``'s upper row blocks to an accumulator that keeps only those (``_mirror`` fills the rest)."""
    edges = _row_blocks(total.shape[-1])
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        total[lo:hi, lo:] += full[lo:hi, lo:]
