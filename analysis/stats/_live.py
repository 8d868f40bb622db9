"""The row-block layout of ``GroupedStats``' per-group products: how a stream fills it and how it is settled.
Private to ``analysis.stats`` (and read by the scores in ``analysis.measure``); shapes are checked by callers.

A symmetric C×C product is kept as its row blocks (rows lo:hi, columns lo:, the blocks of
``_kernel._row_blocks``: 1 block below 256 channels, 2 below 512, else 4) laid one after another in one flat
vector (``BlockLayout``): (b + 1)/(2b) of C² values for b blocks, every entry (i, j ≥ i) at least once, the
diagonal squares whole. One flat vector per image group, the K of them a K × size tensor.

While a stream runs, each group g holds two such accumulators in the working precision (float32, or float64
for float64 maps), about the statistics' shift k (y = x − k):

    U_g = Σ_pairs u uᵀ,  V_g = Σ_pairs v vᵀ,  u = y_a + y_b,  v = y_a − y_b = x_a − x_b,

so that group g's Gram matrix is (U_g + V_g)/2 and its pairs' symmetric cross product (U_g − V_g)/2 (the
identity of :mod:`analysis.stats._pairs`). An unpaired image adds y yᵀ to both (Gram only); a pair whose
images came in different batches adds h = y_a y_bᵀ + y_b y_aᵀ to U and −h to V (cross only). Every product
is one matrix multiply per row block accumulating straight into its place (``addmm_``): no temporaries and no
pass over the C×C accumulators per run of images.

``settle`` turns them, once and in place, into the group Gram and cross vectors (float32, the same layout) and
float64 totals (upper row blocks valid, as ``_kernel._mirror`` expects), moved to another shift on the way if
asked (rank-two updates on the blocks). The scores read the group vectors in this layout (``quadratic``,
``group_sum``, ``from_blocks``): there is no packing pass and no second copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from analysis.stats._kernel import _row_blocks, _symmetrise_


@dataclass(frozen=True)
class BlockLayout:
    """Where each row block (rows lo:hi, columns lo:) of a C×C symmetric product sits in the flat vector."""

    channels: int
    edges: tuple[int, ...]
    offsets: tuple[int, ...]

    @property
    def size(self) -> int:
        return self.offsets[-1]

    def spans(self) -> list[tuple[int, int, int]]:
        """(lo, hi, offset) of each row block."""
        return [(lo, hi, off) for lo, hi, off in zip(self.edges[:-1], self.edges[1:], self.offsets[:-1],
                                                     strict=True)]


@lru_cache(maxsize=256)
def block_layout(channels: int) -> BlockLayout:
    """The row-block layout of a ``channels``×``channels`` accumulator."""
    edges = tuple(_row_blocks(int(channels)))
    offsets = [0]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        offsets.append(offsets[-1] + (hi - lo) * (channels - lo))
    return BlockLayout(int(channels), edges, tuple(offsets))


def blocks(flat: torch.Tensor, layout: BlockLayout) -> list[tuple[int, int, torch.Tensor]]:
    """(lo, hi, view) of each row block of a flat accumulator (…× size: one group's, or a stack of them, then
    each view …×rows×cols); views, so writing them writes ``flat``."""
    c, lead = layout.channels, flat.shape[:-1]
    return [(lo, hi, flat[..., off:off + (hi - lo) * (c - lo)].view(*lead, hi - lo, c - lo))
            for lo, hi, off in layout.spans()]


def add_products(flat: torch.Tensor, z: torch.Tensor, layout: BlockLayout, alpha: float = 1.0) -> None:
    """Add ``alpha`` z zᵀ (z: C×M, any column stride) to one group's accumulator: one multiply per row block,
    so a run of images laid side by side (C × m·P) costs one pass over the block, not m."""
    for lo, hi, block in blocks(flat, layout):
        block.addmm_(z[lo:hi], z[lo:].T, alpha=alpha)


def add_symmetric(flat: torch.Tensor, full: torch.Tensor, layout: BlockLayout, alpha: float = 1.0) -> None:
    """Add ``alpha`` times the row blocks of a symmetric C×C matrix to one group's accumulator."""
    for lo, hi, block in blocks(flat, layout):
        block.add_(full[lo:hi, lo:].to(block.dtype), alpha=alpha)


def _upper(vector: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """A C×C float64 matrix whose upper row blocks are the flat accumulator ``vector`` (the rest zero)."""
    c = layout.channels
    out = torch.zeros(c, c, dtype=torch.float64, device=vector.device)
    for lo, hi, block in blocks(vector, layout):
        out[lo:hi, lo:] = block
    return out


def _shift_blocks(stack: torch.Tensor, layout: BlockLayout, delta: torch.Tensor, sums: torch.Tensor,
                  counts: torch.Tensor) -> None:
    """Move K flat accumulators to another shift, in place: group k gains δ wₖᵀ + wₖ δᵀ with
    wₖ = sₖ + (nₖ/2) δ (δ = old shift − new shift): per row block, one batched product of inner size 2 over
    the K groups ([δ, wₖ] rows times [wₖ; δ] columns), so each block is read and written once."""
    k, c = stack.shape[0], layout.channels
    w = sums.to(torch.float64) + (counts.to(torch.float64) / 2).view(-1, 1) * delta.view(1, -1)
    w, d = w.to(stack.dtype), delta.to(stack.dtype).expand(k, c)
    left, right = torch.stack([d, w], dim=2), torch.stack([w, d], dim=1)  # K×C×2, K×2×C
    for lo, hi, stacked in blocks(stack, layout):
        stacked.baddbmm_(left[:, lo:hi], right[:, :, lo:])


@dataclass
class Settled:
    """The accumulators settled: float64 totals (upper row blocks valid), float32 group vectors (or None)."""

    gram: torch.Tensor
    cross: torch.Tensor
    group_gram: torch.Tensor | None
    group_cross: torch.Tensor | None


def settle(u: torch.Tensor, v: torch.Tensor, layout: BlockLayout, grouped: bool,
           move: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
           ) -> Settled:
    """Settle the K × size accumulators ``u``, ``v`` (spent: changed in place) into totals and group vectors.

    ``move``: (δ, sums K×C, counts K, pair sums K×C, pair counts K) moves the *groups* to the shift k − δ on the
    way (the caller moves the float64 totals itself, exactly); ``grouped=False`` keeps only the totals."""
    # Gram = (U + V)/2 (one pass, into u), cross = (U − V)/2 = Gram − V (one pass, into v); the totals are
    # then the K groups summed in the working precision, then float64 (a float64 reduction over the groups
    # costs 10× more; the 16-term sums round like one more product)
    g = u.lerp_(v, 0.5)
    h = torch.sub(g, v, out=v)
    gram = _upper(g.sum(0).to(torch.float64), layout)
    cross = _upper(h.sum(0).to(torch.float64), layout)
    if not grouped:
        return Settled(gram, cross, None, None)
    if move is not None:  # the Gram gains δ wᵀ + w δᵀ with the sums, the cross product with the pair sums
        delta, sums, counts, pair_sums, pair_counts = move
        _shift_blocks(g, layout, delta, sums, counts)
        _shift_blocks(h, layout, delta, pair_sums, pair_counts)
    return Settled(gram, cross, g.to(torch.float32), h.to(torch.float32))


def to_blocks(full: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """The flat row-block vector (``size`` values) of a C×C matrix (its upper row blocks)."""
    return torch.cat([full[lo:hi, lo:].reshape(-1) for lo, hi, _ in layout.spans()])


def from_blocks(vector: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """The symmetric C×C float64 matrix whose upper row blocks are the flat vector ``vector``."""
    return _symmetrise_(_upper(vector, layout))  # a new matrix: mirrored in place, no copy


def group_sum(stack: torch.Tensor, groups: list[int]) -> torch.Tensor:
    """Σ of the listed groups' flat vectors in float64, added in the order listed."""
    total = stack[groups[0]].to(torch.float64)
    for g in groups[1:]:
        total += stack[g]
    return total


@lru_cache(maxsize=64)
def diagonal_index(channels: int) -> torch.Tensor:
    """Where each (i, i) sits in the flat row-block vector."""
    layout = block_layout(channels)
    out = torch.empty(channels, dtype=torch.long)
    for lo, hi, off in layout.spans():
        r = torch.arange(hi - lo)
        out[lo:hi] = off + r * (channels - lo) + r
    return out


def quadratic(vector: np.ndarray, u: np.ndarray, layout: BlockLayout) -> float:
    """uᵀ A u for the symmetric A whose upper row blocks are the flat float32 ``vector``: each block's rows R
    times its columns, u_Rᵀ A[R, lo:] u[lo:], counts the off-diagonal square once per order and the part right
    of it once, so uᵀ A u = Σ_blocks 2 u_Rᵀ A[R, lo:] u[lo:] − u_Rᵀ A[R, R] u_R."""
    c, total = layout.channels, 0.0
    for lo, hi, off in layout.spans():
        rows = hi - lo
        block = vector[off:off + rows * (c - lo)].reshape(rows, c - lo)
        ur = u[lo:hi]
        total += 2.0 * float(np.dot(block @ u[lo:], ur)) - float(np.dot(block[:, :rows] @ ur, ur))
    return total
