"""Channel statistics of an image set split over K groups of images (for jackknife intervals), with each image
paired with the next one in the stream (for the noise-matched null); ``total()`` is exactly the one-pass
:class:`~analysis.stats.layer.LayerStats`. Kernels: :mod:`analysis.stats._pairs`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from analysis._core.errors import GhostmapsError
from analysis.stats._fold import StreamFold
from analysis.stats._kernel import DEFAULT_GROUPS, DEFAULT_TOL, _mirror
from analysis.stats._live import _shift_blocks, block_layout, from_blocks, group_sum
from analysis.stats.layer import LayerStats
from analysis.stats.moments import PairedMoments

__all__ = ["GroupedStats"]

_TENSORS = ("shift", "gram", "cross", "group_gram", "group_cross", "sums", "count", "images", "pair_sums",
            "pair_count", "nonzero", "sampled", "min", "max", "live_u", "live_v")
#: The C×C accumulators that exist only once the streaming ones are settled (reading one settles them).
_SETTLED = frozenset({"gram", "cross", "group_gram", "group_cross"})


@dataclass
class GroupedStats(StreamFold):
    """``LayerStats`` split over K groups of images, with the noise-matched null's cross products.

    Image number i (its position in the image set) belongs to block ``i // chunk`` and group
    ``(i // chunk) mod K``; ``chunk`` is even, so the images 2j and 2j + 1 of a pair are always in one group
    (and, under ``distributed``, one process). Per group, in float32 and in the row-block layout of
    :mod:`analysis.stats._live` (K × size): the Gram matrix Σ (x − k)(x − k)ᵀ and the pairs' symmetric cross
    product Σ_pairs (x_a − k)(x_b − k)ᵀ + (x_b − k)(x_a − k)ᵀ; per group in float64: sums, positions and images,
    and the same for the paired images only. The totals (Gram and cross) are kept apart in float64 (upper row
    blocks valid; ``moments`` and ``total`` mirror them), so ``total()`` is the one-pass ``LayerStats``. Memory
    16·C² + 8·K·C²·(b + 1)/(2b) bytes for b row blocks (5·K·C² from 512 channels, 6 from 256, 8 below),
    whatever the number of images; ``groups=1`` keeps no group vectors (no intervals).

    While images stream in, the products go to the per-group accumulators ``live_u``, ``live_v`` (the same
    layout and size) instead, and the C×C fields above are None; reading any of them (or ``finish``, which a
    stream calls at its end) settles the accumulators into them once, in place. A checkpoint (``state_dict``)
    keeps whichever form the statistics are in, so a resumed stream continues bit for bit.

    ``positions=m`` folds, for each pair, the same seeded random m positions of its two images (all of them
    when a map has at most m), weighted by P/m: an unbiased estimate of every moment (``estimated`` says so).
    """

    groups: int = DEFAULT_GROUPS
    chunk: int = 2
    tol: float = DEFAULT_TOL
    positions: int | None = None
    seed: int = 0
    channels: int | None = None
    spatial: tuple[int, ...] | None = None
    shift: torch.Tensor | None = None
    gram: torch.Tensor | None = None
    cross: torch.Tensor | None = None
    group_gram: torch.Tensor | None = None
    group_cross: torch.Tensor | None = None
    sums: torch.Tensor | None = None
    count: torch.Tensor | None = None
    images: torch.Tensor | None = None
    pair_sums: torch.Tensor | None = None
    pair_count: torch.Tensor | None = None
    nonzero: torch.Tensor | None = None
    sampled: torch.Tensor | None = None
    min: torch.Tensor | None = None
    max: torch.Tensor | None = None
    pending: dict[int, tuple[int, torch.Tensor, float]] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    started: bool = False  # whether the shift was set from data (a host flag: no device read per batch)
    live_u: torch.Tensor | None = None  # K × size streaming accumulators (analysis.stats._live), or None
    live_v: torch.Tensor | None = None

    def __getattribute__(self, name: str) -> Any:
        # the C×C accumulators are settled from the streaming ones the first time anyone reads them
        if name in _SETTLED:
            d = object.__getattribute__(self, "__dict__")
            if d.get("live_u") is not None:
                object.__getattribute__(self, "_settle")()
        return object.__getattribute__(self, name)

    def __post_init__(self) -> None:
        if int(self.groups) < 1 or int(self.chunk) < 2 or int(self.chunk) % 2:
            raise GhostmapsError(f"groups must be at least 1 and chunk an even number ≥ 2 (pairs of images never "
                                 f"straddle groups), got groups={self.groups}, chunk={self.chunk}.")
        if self.positions is not None and int(self.positions) < 1:
            raise GhostmapsError(f"positions must be a number of positions per image ≥ 1 (or None for all), got "
                                 f"{self.positions!r}.")

    def init(self, channels: int, spatial: tuple[int, ...], device: str | torch.device = "cpu") -> GroupedStats:
        """Allocate zero accumulators for ``channels`` channels with maps of shape ``spatial`` (H, W)."""
        self.channels, self.spatial, self.device = int(channels), tuple(spatial), torch.device(device)
        self.started, self.pending = False, {}
        c, k = self.channels, self.groups
        f64 = {"dtype": torch.float64, "device": self.device}
        i64 = {"dtype": torch.int64, "device": self.device}
        self.shift = torch.zeros(c, **f64)
        # the C×C accumulators are made when first read or settled (a stream fills the streaming ones instead)
        self.gram = self.cross = self.group_gram = self.group_cross = self.live_u = self.live_v = None
        self.sums, self.pair_sums = torch.zeros(k, c, **f64), torch.zeros(k, c, **f64)
        self.count, self.images, self.pair_count = (torch.zeros(k, **i64) for _ in range(3))
        self.nonzero, self.sampled = torch.zeros(c, **i64), torch.zeros((), **i64)
        self.min = torch.full((c,), float("inf"), **f64)
        self.max = torch.full((c,), float("-inf"), **f64)
        return self

    # -- sizes ---------------------------------------------------------------------------------------------
    @property
    def total_count(self) -> int:
        return 0 if self.count is None else int(self.count.sum())

    @property
    def total_images(self) -> int:
        return 0 if self.images is None else int(self.images.sum())

    @property
    def estimated(self) -> bool:
        """Whether the moments are estimates from a subset of positions (``positions=``)."""
        return self.positions is not None and self.sampled is not None and int(self.sampled) < self.total_count

    @property
    def filled_groups(self) -> list[int]:
        """Groups that received at least one image."""
        return [] if self.images is None else torch.nonzero(self.images > 0).flatten().tolist()

    def group_of(self, index: int) -> int:
        """The group of the image with this position in the image set."""
        return (index // self.chunk) % self.groups

    # -- reading -------------------------------------------------------------------------------------------
    def _require(self) -> None:
        if self.channels is None or self.total_count == 0:
            raise GhostmapsError("these statistics are empty; call update(maps) with at least one batch first.")

    def _nonzero_estimate(self) -> torch.Tensor:
        sampled, total = int(self.sampled), self.total_count
        if sampled in (0, total):
            return self.nonzero.clone()
        return torch.round(self.nonzero.to(torch.float64) * (total / sampled)).to(torch.int64)

    def total(self) -> LayerStats:
        """The ``LayerStats`` of all images (the sum of the groups)."""
        self._require()
        return LayerStats(self.tol, self.channels, self.total_count, self.total_images, self.shift.clone(),
                          _mirror(self.gram), self.sums.sum(0), self._nonzero_estimate(), self.min.clone(),
                          self.max.clone(), self.device)

    def moments(self, groups: Sequence[int] | None = None) -> PairedMoments:
        """Gram, cross product, sums and counts (float64, about ``shift``) of all images, or of the listed
        groups (summed from the float32 group vectors)."""
        self._require()
        if groups is None:
            return PairedMoments(self.shift.clone(), _mirror(self.gram), _mirror(self.cross), self.sums.sum(0),
                                 float(self.count.sum()), self.pair_sums.sum(0), float(self.pair_count.sum()),
                                 self.total_images)
        if self.group_gram is None:
            raise GhostmapsError("these statistics keep no image groups (groups=1 or a compact file).")
        g = list(groups)
        layout = block_layout(self.channels)
        gram = from_blocks(group_sum(self.group_gram, g), layout)
        cross = from_blocks(group_sum(self.group_cross, g), layout)
        return PairedMoments(self.shift.clone(), gram, cross, self.sums[g].sum(0), float(self.count[g].sum()),
                             self.pair_sums[g].sum(0), float(self.pair_count[g].sum()), int(self.images[g].sum()))

    # -- combining -----------------------------------------------------------------------------------------
    def with_shift(self, shift: torch.Tensor) -> GroupedStats:
        """The same statistics about another shift (exact float64 algebra for the totals, group by group for
        the float32 group vectors)."""
        self._require()
        shift = shift.to(device=self.device, dtype=torch.float64)
        delta = self.shift - shift
        out = self._copy()
        cnt, pcnt = self.count.to(torch.float64), self.pair_count.to(torch.float64)
        if out.group_gram is not None:
            _shift_blocks(out.group_gram, block_layout(self.channels), delta, self.sums, cnt)
            _shift_blocks(out.group_cross, block_layout(self.channels), delta, self.pair_sums, pcnt)
        out._moved(shift.clone(), delta, cnt, pcnt)
        return out

    def to(self, device: str | torch.device) -> GroupedStats:
        """A copy on another device (the statistics are unchanged)."""
        out = self._copy()
        for name in _TENSORS:
            value = getattr(out, name)
            if isinstance(value, torch.Tensor):
                setattr(out, name, value.to(device))
        out.pending = {j: (i, y.to(device), w) for j, (i, y, w) in self.pending.items()}
        out.device = torch.device(device)
        return out

    def _copy(self) -> GroupedStats:
        if self.__dict__.get("live_u") is not None:
            self._settle()  # a copy of the settled statistics (never two owners of one stream's sums)
        values = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        values["pending"] = {j: (i, y.clone(), w) for j, (i, y, w) in self.pending.items()}
        return GroupedStats(**values)

    def _layout(self) -> tuple[Any, ...]:
        return self.channels, self.groups, self.chunk, self.tol, self.positions, self.seed

    def merge(self, other: GroupedStats) -> GroupedStats:
        """A new ``GroupedStats`` holding both image sets (group k with group k; a pair split between the two
        is completed). Neither input is changed."""
        if other.channels is None or other.total_count == 0:
            return self._copy()
        if self.channels is None or self.total_count == 0:
            return other._copy()
        if other._layout() != self._layout():
            raise GhostmapsError("cannot merge statistics with different channels, groups, chunk, tol, positions or "
                                 f"seed: {self._layout()} vs {other._layout()}.")
        o = (other if other.device == self.device else other.to(self.device)).with_shift(self.shift)
        out = self._copy()
        for name in ("gram", "cross", "group_gram", "group_cross", "sums", "count", "images", "pair_sums",
                     "pair_count", "nonzero", "sampled"):
            if getattr(out, name) is not None:
                setattr(out, name, getattr(out, name) + getattr(o, name))
        out.min, out.max = torch.minimum(self.min, o.min), torch.maximum(self.max, o.max)
        if out.spatial != o.spatial:
            out.spatial = None
        for j, (i, y, w) in o.pending.items():
            mine = out.pending.pop(j, None)
            if mine is None:
                out.pending[j] = (i, y.clone(), w)
            elif mine[1].shape == y.shape and mine[2] == w and mine[0] != i:
                p = round(y.shape[1] * w * w)  # the positions of each image (weight² = P / sampled)
                out._complete(mine[1], y, self.group_of(i), w, p)
        return out

    def __add__(self, other: GroupedStats) -> GroupedStats:
        return self.merge(other)

    def all_reduce(self) -> GroupedStats:
        """Sum these statistics over all processes of the default ``torch.distributed`` group, in place.

        Every process must call it with statistics of the same layer, initialised with ``init`` (zero counts
        allowed). All move to one common shift (the count-weighted mean of the shifts) first, so the sums of
        the shifted moments are exact; the result on every process equals a single pass over all images. Pairs
        never straddle processes (blocks of an even number of images), so nothing is pending across them."""
        import torch.distributed as dist

        if self.channels is None:
            raise GhostmapsError("call init(channels, spatial) before all_reduce on a process that saw no images.")
        self.finish()
        cnt = torch.tensor([float(self.total_count)], dtype=torch.float64, device=self.device)
        weighted = self.shift * cnt
        dist.all_reduce(cnt)
        dist.all_reduce(weighted)
        common = weighted / cnt.clamp_min(1)
        self.started = bool(cnt.item() > 0)
        if self.total_count:
            rebased = self.with_shift(common)
            for name in ("gram", "cross", "group_gram", "group_cross", "sums", "pair_sums"):
                setattr(self, name, getattr(rebased, name))
        self.shift = common
        for name in ("gram", "cross", "sums", "count", "images", "pair_sums", "pair_count", "nonzero", "sampled",
                     "group_gram", "group_cross"):
            if getattr(self, name) is not None:
                dist.all_reduce(getattr(self, name))
        dist.all_reduce(self.min, op=dist.ReduceOp.MIN)
        dist.all_reduce(self.max, op=dist.ReduceOp.MAX)
        return self

    def collapsed(self) -> GroupedStats:
        """A copy with all images in one group: the same totals and null, no group vectors (and so no intervals);
        16·C² + 4·K·C² bytes become 16·C²."""
        out = self._copy()
        out.groups, out.group_gram, out.group_cross = 1, None, None
        if out.sums is not None:
            for name in ("sums", "count", "images", "pair_sums", "pair_count"):
                setattr(out, name, getattr(out, name).sum(0, keepdim=True))
        return out

    def nbytes(self) -> int:
        """Bytes held by the accumulators (what a survey keeps per layer)."""
        total = sum(v.numel() * v.element_size() for v in (self.__dict__.get(n) for n in _TENSORS)
                    if isinstance(v, torch.Tensor))  # what is held now (no settling)
        return total + sum(y.numel() * y.element_size() for _, y, _ in self.pending.values())

    def state_dict(self) -> dict[str, object]:
        """Plain tensors and numbers (for ``torch.save`` / ``torch.load(weights_only=True)``)."""
        state = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()
                 if k not in ("device", "pending")}
        state["spatial"] = list(self.spatial or ())
        state["pending"] = [[j, i, y.cpu(), w] for j, (i, y, w) in self.pending.items()]
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, object]) -> GroupedStats:
        state = dict(state)
        state["spatial"] = tuple(state["spatial"]) if state.get("channels") is not None else None
        state["pending"] = {int(j): (int(i), y, float(w)) for j, i, y, w in state.get("pending", [])}
        return cls(**state)
