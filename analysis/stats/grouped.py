"""Channel statistics of an image set split over K groups of images (for jackknife intervals), with each image
paired with the next one in the stream (for the noise-matched null); ``total()`` is exactly the one-pass
:class:`~analysis.stats.layer.LayerStats`. Kernels: :mod:`analysis.stats._pairs`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from analysis._core.errors import GhostmapsError
from analysis.stats._kernel import DEFAULT_GROUPS, DEFAULT_TOL, _mirror, _reshift_gram, prepare_batch
from analysis.stats._pairs import fold_cross, fold_pairs, fold_singles, packed_size, reshift_packed, unpack
from analysis.stats.layer import LayerStats
from analysis.stats.moments import PairedMoments, position_subset

__all__ = ["GroupedStats"]

_TENSORS = ("shift", "gram", "cross", "group_gram", "group_cross", "sums", "count", "images", "pair_sums",
            "pair_count", "nonzero", "sampled", "min", "max")


@dataclass
class GroupedStats:
    """``LayerStats`` split over K groups of images, with the noise-matched null's cross products.

    Image number i (its position in the image set) belongs to block ``i // chunk`` and group
    ``(i // chunk) mod K``; ``chunk`` is even, so the images 2j and 2j + 1 of a pair are always in one group
    (and, under ``distributed``, one process). Per group, in float32 and packed (upper triangles, see
    :mod:`analysis.stats._pairs`): the Gram matrix Σ (x − k)(x − k)ᵀ and the pairs' symmetric cross product
    Σ_pairs (x_a − k)(x_b − k)ᵀ + (x_b − k)(x_a − k)ᵀ; per group in float64: sums, positions and images, and
    the same for the paired images only. The totals (Gram and cross) are kept apart in float64, so ``total()``
    is exactly the one-pass ``LayerStats``. Memory 16·C² + 4·K·C² bytes (K groups), whatever the number of
    images; ``groups=1`` keeps no group vectors (no intervals).

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
        self.gram, self.cross = torch.zeros(c, c, **f64), torch.zeros(c, c, **f64)
        if k > 1:
            self.group_gram = torch.zeros(k, packed_size(c, 0), dtype=torch.float32, device=self.device)
            self.group_cross = torch.zeros(k, packed_size(c, 0), dtype=torch.float32, device=self.device)
        else:
            self.group_gram = self.group_cross = None
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

    # -- folding -------------------------------------------------------------------------------------------
    def update(self, maps: torch.Tensor, first_index: int | Sequence[int] = 0, *, owned: bool = False
               ) -> GroupedStats:
        """Fold a batch of maps (N×C×H×W or N×C). ``first_index``: the position of its first image in the image
        set (the others follow), or the N positions themselves. ``owned=True`` lets the statistics shift the
        maps in place (the caller's copy is then spent). A batch with NaN or inf is refused before anything
        changes."""
        if not isinstance(maps, torch.Tensor) or maps.dim() not in (2, 4):
            shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
            raise GhostmapsError(f"maps must be an N×C×H×W (or N×C) tensor, got {shape}.")
        n, c = maps.shape[:2]
        spatial = tuple(maps.shape[2:])
        if self.channels is not None and c != self.channels:
            raise GhostmapsError(f"these maps have {c} channels but the statistics hold {self.channels}.")
        index = list(range(first_index, first_index + n)) if isinstance(first_index, int) else \
            [int(i) for i in first_index]
        if len(index) != n:
            raise GhostmapsError(f"got {len(index)} image positions for a batch of {n} images.")
        p = math.prod(spatial)
        if n == 0 or p == 0:
            if self.channels is None:
                self.init(c, spatial, maps.device)
            return self
        x, weight = maps, 1.0
        if self.positions is not None and int(self.positions) < p:
            x, owned, weight = self._subsample(maps.reshape(n, c, p), index, p), True, p / int(self.positions)
        # the shared first half of the fold (analysis.stats._kernel): refuses NaN/inf before anything changes
        batch = prepare_batch(x, self.tol, self.shift if self.started else None, owned=owned)
        if self.channels is None:
            self.init(c, spatial, maps.device)
        if not self.started:  # a Python flag, not a look at the device counts (no host sync per batch)
            self.shift, self.started = batch.shift.to(self.device), True
        self.min, self.max = torch.minimum(self.min, batch.low), torch.maximum(self.max, batch.high)
        self.nonzero += batch.nonzero
        self.sampled += n * batch.positions
        y = batch.y  # ours: the spent owned copy or a new tensor
        if weight != 1.0:
            y.mul_(math.sqrt(weight))
        self._fold(y, index, p, math.sqrt(weight))
        return self

    def _subsample(self, x: torch.Tensor, index: list[int], p: int) -> torch.Tensor:
        m = int(self.positions)
        out = torch.empty(x.shape[0], x.shape[1], m, dtype=x.dtype, device=x.device)
        for t, i in enumerate(index):
            out[t] = x[t].index_select(1, position_subset(self.seed, i // 2, p, m, x.device))
        return out

    def _fold(self, y: torch.Tensor, index: list[int], p: int, root_w: float) -> None:
        """Fold shifted (and weighted) maps: pairs complete in this batch with the paired kernel, the others as
        single images (waiting in ``pending`` for their partner)."""
        where = {i: t for t, i in enumerate(index)}
        runs: dict[int, tuple[list[int], list[int]]] = {}
        singles: list[int] = []
        for t, i in enumerate(index):
            partner = where.get(i ^ 1)
            if partner is None:
                singles.append(t)
            elif i % 2 == 0:
                a, b = runs.setdefault(self.group_of(i), ([], []))
                a.append(t)
                b.append(partner)
        for g, (a, b) in runs.items():
            ya, yb = self._rows(y, a), self._rows(y, b)
            gg, gc = (None, None) if self.group_gram is None else (self.group_gram[g], self.group_cross[g])
            fold_pairs(ya, yb, self.gram, self.cross, gg, gc)
            part = (ya.sum(dim=(0, 2)) + yb.sum(dim=(0, 2))).to(torch.float64) * root_w
            self.sums[g] += part
            self.pair_sums[g] += part
            self.count[g] += 2 * len(a) * p
            self.pair_count[g] += 2 * len(a) * p
            self.images[g] += 2 * len(a)
        for t in singles:
            i, g = index[t], self.group_of(index[t])
            yt = y[t:t + 1]
            fold_singles(yt, self.gram, None if self.group_gram is None else self.group_gram[g])
            part = yt.sum(dim=(0, 2)).to(torch.float64) * root_w
            self.sums[g] += part
            self.count[g] += p
            self.images[g] += 1
            waiting = self.pending.pop(i // 2, None)
            if waiting is not None and waiting[1].shape == yt[0].shape and waiting[2] == root_w and waiting[0] != i:
                self._complete(waiting[1].to(yt.dtype), yt[0], g, root_w, p)
            else:
                self.pending[i // 2] = (i, yt[0].clone(), root_w)

    def _complete(self, ya: torch.Tensor, yb: torch.Tensor, g: int, root_w: float, p: int) -> None:
        """Add the cross product of a pair whose images were folded apart (each already in the Gram totals)."""
        fold_cross(ya, yb, self.cross, None if self.group_cross is None else self.group_cross[g])
        self.pair_sums[g] += (ya.sum(dim=1) + yb.sum(dim=1)).to(torch.float64) * root_w
        self.pair_count[g] += 2 * p

    @staticmethod
    def _rows(y: torch.Tensor, rows: list[int]) -> torch.Tensor:
        if rows == list(range(rows[0], rows[0] + 2 * len(rows), 2)):
            return y[rows[0]:rows[-1] + 1:2]  # the usual case, pairs side by side: a view
        return y[rows]

    def finish(self) -> GroupedStats:
        """Forget the images still waiting for a partner (an odd last image): they stay in the Gram totals and
        out of the null. ``survey`` calls it when the stream ends; ``update`` after it starts new pairs."""
        self.pending = {}
        return self

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
        c = self.channels
        gram = unpack(self.group_gram[g].sum(0, dtype=torch.float64), c, 0)
        cross = unpack(self.group_cross[g].sum(0, dtype=torch.float64), c, 0)
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
        out.gram = _reshift_gram(self.gram, self.sums.sum(0), float(cnt.sum()), delta)
        # cross: Σ_pairs over both orders of (y_a + δ)(y_b + δ)ᵀ = H + δ spᵀ + sp δᵀ + (paired positions) δδᵀ
        out.cross = _reshift_gram(self.cross, self.pair_sums.sum(0), float(pcnt.sum()), delta)
        if out.group_gram is not None:
            reshift_packed(out.group_gram, self.sums, cnt, delta)
            reshift_packed(out.group_cross, self.pair_sums, pcnt, delta)
        out.shift = shift.clone()
        out.sums = self.sums + cnt.view(-1, 1) * delta
        out.pair_sums = self.pair_sums + pcnt.view(-1, 1) * delta
        out.pending = {j: (i, y + (delta * w).to(y.dtype).view(-1, 1), w) for j, (i, y, w) in self.pending.items()}
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
        total = sum(v.numel() * v.element_size() for v in (getattr(self, n) for n in _TENSORS)
                    if isinstance(v, torch.Tensor))
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
