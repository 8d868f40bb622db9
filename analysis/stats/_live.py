"""The streaming layout of ``GroupedStats``' per-group products, and its one conversion to the packed layout
that everything else reads. Private to ``analysis.stats``; shapes are checked by the callers.

While a stream runs, each image group g holds two accumulators in the working precision (float32, or float64
for float64 maps), about the statistics' shift k (y = x − k):

    U_g = Σ_pairs u uᵀ,  V_g = Σ_pairs v vᵀ,  u = y_a + y_b,  v = y_a − y_b = x_a − x_b,

so that group g's Gram matrix is (U_g + V_g)/2 and its pairs' symmetric cross product (U_g − V_g)/2 (the
identity of :mod:`analysis.stats._pairs`). An unpaired image adds y yᵀ to both (Gram only); a pair whose
images came in different batches adds h = y_a y_bᵀ + y_b y_aᵀ to U and −h to V (cross only).

Each accumulator is the row blocks of a symmetric product (rows lo:hi, columns lo:, the blocks of
``_kernel._row_blocks``) laid one after another in one flat vector per group, so every product is one matrix
multiply accumulating straight into its block (``addmm_``): no temporaries and no C×C pass per group run,
which is what the per-group packed vectors cost when each run is added to them. ``settle`` turns the
accumulators, once, into float64 totals (upper row blocks valid, as ``_kernel._mirror`` expects) and packed
float32 group vectors, moving them to another shift on the way if asked (rank-two updates on the blocks).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from analysis.stats._kernel import _row_blocks
from analysis.stats._pairs import _block_index, packed_size


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
    """(lo, hi, view) of each row block of one group's flat accumulator (views: writing them writes ``flat``)."""
    c = layout.channels
    return [(lo, hi, flat[off:off + (hi - lo) * (c - lo)].view(hi - lo, c - lo)) for lo, hi, off in layout.spans()]


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


@lru_cache(maxsize=16)
def _pack_index(channels: int, device: str) -> torch.Tensor:
    """Where each packed (triu-order) entry sits in the flat accumulator: row r of a block from its diagonal on."""
    layout = block_layout(channels)
    return torch.cat([_block_index(hi - lo, channels - lo, 0, device) + off for lo, hi, off in layout.spans()])


def _pack(stack: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """K flat accumulators (K × size) as K packed upper triangles (triu order, their dtype): one gather."""
    out = torch.empty(stack.shape[0], packed_size(layout.channels, 0), dtype=stack.dtype, device=stack.device)
    torch.index_select(stack, 1, _pack_index(layout.channels, str(stack.device)), out=out)
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
    for lo, hi, off in layout.spans():
        blocks = stack[:, off:off + (hi - lo) * (c - lo)].view(k, hi - lo, c - lo)
        blocks.baddbmm_(left[:, lo:hi], right[:, :, lo:])


@dataclass
class Settled:
    """The accumulators converted: float64 totals (upper row blocks valid), packed float32 groups (or None)."""

    gram: torch.Tensor
    cross: torch.Tensor
    group_gram: torch.Tensor | None
    group_cross: torch.Tensor | None


def settle(u: torch.Tensor, v: torch.Tensor, layout: BlockLayout, grouped: bool,
           move: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
           ) -> Settled:
    """Convert the K × size accumulators ``u``, ``v`` (spent: changed in place) to totals and packed groups.

    ``move``: (δ, sums K×C, counts K, pair sums K×C, pair counts K) moves the *groups* to the shift k − δ on the
    way (the caller moves the float64 totals itself, exactly); ``grouped=False`` keeps only the totals."""
    # totals: the K groups summed in the working precision, then float64 (a float64 reduction over the groups
    # costs 10× more; the 16-term sums round like one more product); Gram = (U + V)/2, cross = (U − V)/2
    us, vs = u.sum(0), v.sum(0)
    gram = _upper(torch.add(us, vs).mul_(0.5).to(torch.float64), layout)
    cross = _upper(us.sub_(vs).mul_(0.5).to(torch.float64), layout)
    if not grouped:
        return Settled(gram, cross, None, None)
    if move is not None:  # U = Gram + cross gains (δ wᵀ + w δᵀ) + (δ pwᵀ + pw δᵀ), V the difference
        delta, sums, counts, pair_sums, pair_counts = move
        _shift_blocks(u, layout, delta, sums + pair_sums, counts + pair_counts)
        _shift_blocks(v, layout, delta, sums - pair_sums, counts - pair_counts)
    # pack first (the packed vectors are smaller than the blocks), then Gram and cross on them
    gp, hp = _pack(u, layout), _pack(v, layout)
    gp.add_(hp).mul_(0.5)  # (U + V)/2
    torch.sub(gp, hp, out=hp)  # cross = Gram − V
    return Settled(gram, cross, gp.to(torch.float32), hp.to(torch.float32))
