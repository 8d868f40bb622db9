"""Channel statistics split over K groups of images (for intervals) plus per-position sums (for the
cross-image null); ``total()`` is exactly the one-pass :class:`~analysis.stats.layer.LayerStats`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from analysis._core.errors import GhostmapsError
from analysis._core.validation import check_positive_int
from analysis.stats._kernel import (
    DEFAULT_GROUPS,
    DEFAULT_TOL,
    _mirror,
    _reshift_gram,
    add_moments,
    prepare_batch,
)
from analysis.stats.layer import LayerStats

__all__ = ["GroupedStats"]


@dataclass
class GroupedStats:
    """``LayerStats`` split over K groups of images, plus per-position sums over images.

    Image number i (its position in the whole image set) belongs to block ``i // chunk`` and group
    ``(i // chunk) mod K``. Each group keeps its own Gram matrix (``group_gram``, float32: it only feeds
    confidence intervals), sums, position and image counts (one shared shift); the total Gram matrix is kept
    apart in float64. So ``total()`` is exactly the one-pass ``LayerStats`` and ``resample(weights)`` is a
    bootstrap replicate over groups of images; nothing depends on batch size or order. Why groups and not
    images: a batch of consecutive images touches one or two groups, so the per-batch cost stays about that of
    one Gram matrix; memory is (8 + 4K)·C² bytes instead of 8·C², still independent of the number of images.
    With ``groups=1`` there are no group matrices (and no intervals).

    ``position_sums`` S (C×P, P = H·W positions per image, raw values) gives the cross-image null exactly:
    Σ_{n≠n'} x_i(n, p)·x_j(n', p) summed over p equals (S Sᵀ − Σ x xᵀ)_ij, i.e. every pair of *different*
    images compared position by position. It is dropped (``None``) when images of different sizes arrive.
    """

    groups: int = DEFAULT_GROUPS
    chunk: int = 1
    tol: float = DEFAULT_TOL
    channels: int | None = None
    spatial: tuple[int, ...] | None = None
    shift: torch.Tensor | None = None
    gram: torch.Tensor | None = None
    group_gram: torch.Tensor | None = None
    sums: torch.Tensor | None = None
    count: torch.Tensor | None = None
    images: torch.Tensor | None = None
    nonzero: torch.Tensor | None = None
    min: torch.Tensor | None = None
    max: torch.Tensor | None = None
    position_sums: torch.Tensor | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    started: bool = False  # whether the shift was set from data (kept on the host: no device read per batch)

    def __post_init__(self) -> None:
        self.groups = check_positive_int(self.groups, "groups")
        self.chunk = check_positive_int(self.chunk, "chunk")

    def init(self, channels: int, spatial: tuple[int, ...], device: str | torch.device = "cpu") -> GroupedStats:
        """Allocate zero accumulators for ``channels`` channels with maps of shape ``spatial`` (H, W)."""
        self.channels, self.spatial, self.device = int(channels), tuple(spatial), torch.device(device)
        self.started = False
        c, k = self.channels, self.groups
        f64 = {"dtype": torch.float64, "device": self.device}
        self.shift = torch.zeros(c, **f64)
        self.gram = torch.zeros(c, c, **f64)
        self.group_gram = torch.zeros(k, c, c, dtype=torch.float32, device=self.device) if k > 1 else None
        self.sums = torch.zeros(k, c, **f64)
        self.count = torch.zeros(k, dtype=torch.int64, device=self.device)
        self.images = torch.zeros(k, dtype=torch.int64, device=self.device)
        self.nonzero = torch.zeros(c, dtype=torch.int64, device=self.device)
        self.min = torch.full((c,), float("inf"), **f64)
        self.max = torch.full((c,), float("-inf"), **f64)
        positions = 1
        for s in self.spatial:
            positions *= s
        self.position_sums = torch.zeros(c, positions, **f64)
        return self

    @property
    def total_count(self) -> int:
        return 0 if self.count is None else int(self.count.sum())

    @property
    def total_images(self) -> int:
        return 0 if self.images is None else int(self.images.sum())

    def group_of(self, index: int) -> int:
        """The group of the image with this position in the image set."""
        return (index // self.chunk) % self.groups

    def update(self, maps: torch.Tensor, first_index: int | Sequence[int] = 0, *, owned: bool = False
               ) -> GroupedStats:
        """Fold a batch of maps (N×C×H×W or N×C). ``first_index``: the position of its first image in the image
        set (the others follow), or the N positions themselves. ``owned=True`` lets the statistics shift the
        maps in place (the caller's copy is then spent; ``survey`` passes the copy ``capture`` made). A batch
        with NaN or inf is refused (``GhostmapsError``) before anything changes. The fold is the one of
        :mod:`analysis.stats._kernel`, one run of consecutive images of the same group at a time."""
        if not isinstance(maps, torch.Tensor) or maps.dim() not in (2, 4):
            shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
            raise GhostmapsError(f"maps must be an N×C×H×W (or N×C) tensor, got {shape}.")
        n, c = maps.shape[:2]
        spatial = tuple(maps.shape[2:])
        if self.channels is not None and c != self.channels:
            raise GhostmapsError(f"these maps have {c} channels but the statistics hold {self.channels}.")
        if isinstance(first_index, int):
            positions = range(first_index, first_index + n)
        else:
            positions = [int(i) for i in first_index]
            if len(positions) != n:
                raise GhostmapsError(f"got {len(positions)} image positions for a batch of {n} images.")
        if n == 0 or math.prod(spatial) == 0:
            if self.channels is None:
                self.init(c, spatial, maps.device)
            return self
        aligned = self.channels is None or (self.position_sums is not None and spatial == self.spatial)
        batch = prepare_batch(maps, self.tol, self.shift if self.started else None, owned=owned,
                              position_sums=aligned)  # refuses NaN/inf: nothing has changed yet
        if self.channels is None:
            self.init(c, spatial, maps.device)
        if not self.started:  # a Python flag, not a look at the device counts (no host sync per batch)
            self.shift, self.started = batch.shift.to(self.device), True
        self.min = torch.minimum(self.min, batch.low)
        self.max = torch.maximum(self.max, batch.high)
        self.nonzero += batch.nonzero
        if batch.position_sums is not None:
            self.position_sums += batch.position_sums  # ≤ one batch in the working precision, then float64
        else:
            self.position_sums = None  # images of different sizes: no position-aligned baseline
        y, p = batch.y, batch.positions
        groups = [self.group_of(i) for i in positions]
        start = 0
        while start < n:
            g, stop = groups[start], start + 1
            while stop < n and groups[stop] == g:
                stop += 1
            self.sums[g] += add_moments(y[start:stop], self.gram,
                                        None if self.group_gram is None else self.group_gram[g])
            self.count[g] += (stop - start) * p
            self.images[g] += stop - start
            start = stop
        return self

    def _require(self) -> None:
        if self.channels is None or self.total_count == 0:
            raise GhostmapsError("these statistics are empty; call update(maps) with at least one batch first.")

    def _stats(self, gram: torch.Tensor, sums: torch.Tensor, count: int, images: int) -> LayerStats:
        return LayerStats(self.tol, self.channels, count, images, self.shift.clone(), gram, sums,
                          self.nonzero.clone(), self.min.clone(), self.max.clone(), self.device)

    def total(self) -> LayerStats:
        """The ``LayerStats`` of all images (the sum of the groups)."""
        self._require()
        return self._stats(_mirror(self.gram), self.sums.sum(0), self.total_count, self.total_images)

    def group(self, k: int) -> LayerStats:
        """The moments of group ``k`` alone (dead/constant masks stay those of all images)."""
        return self.resample(torch.eye(self.groups, dtype=torch.float64)[k])

    @property
    def filled_groups(self) -> list[int]:
        """Groups that received at least one image."""
        return [] if self.images is None else torch.nonzero(self.images > 0).flatten().tolist()

    def resample(self, weights: torch.Tensor) -> LayerStats:
        """A bootstrap replicate: group k counted ``weights[k]`` times (integer weights, one per group).
        Dead/constant masks (from min/max) stay those of all images, so a replicate never revives a channel."""
        self._require()
        w = torch.as_tensor(weights, dtype=torch.float64, device=self.device)
        if w.shape != (self.groups,):
            raise GhostmapsError(f"resample needs one weight per group ({self.groups}), got shape {tuple(w.shape)}.")
        if self.group_gram is None:
            gram = _mirror(self.gram) * float(w[0])
        else:
            gram = torch.zeros_like(self.gram)
            for k in torch.nonzero(w).flatten().tolist():
                gram += float(w[k]) * self.group_gram[k]
            gram = _mirror(gram)
        count = int(round(float((w * self.count.to(torch.float64)).sum())))
        images = int(round(float((w * self.images.to(torch.float64)).sum())))
        return self._stats(gram, w @ self.sums, count, images)

    def cross_image_moment(self) -> torch.Tensor | None:
        """C×C null second moment: E[x_i(n, p)·x_j(n', p)] over positions p and pairs of different images
        n ≠ n' (from the position sums; ``None`` with fewer than two images or mixed image sizes).

        The diagonal holds each channel's own E[x_i²], so a similarity built from it has the observed norms."""
        self._require()
        n = self.total_images
        if self.position_sums is None or n < 2:
            return None
        raw = self.total().second_moment * self.total_count  # Σ x xᵀ over all positions of all images
        s = self.position_sums
        cross = (s @ s.T - raw) / (n - 1)  # per image, the expected product with one other image
        cross = (cross + cross.T) / (2 * self.total_count)
        cross.diagonal().copy_(raw.diagonal() / self.total_count)
        return cross

    # -- combining ----------------------------------------------------------------------------------------
    def with_shift(self, shift: torch.Tensor) -> GroupedStats:
        """The same statistics about another shift (exact float64 algebra, group by group)."""
        self._require()
        shift = shift.to(device=self.device, dtype=torch.float64)
        delta = self.shift - shift
        s, cnt = self.sums, self.count.to(torch.float64)
        out = self._copy()
        if out.group_gram is not None:
            out.group_gram += (delta.view(1, -1, 1) * s.unsqueeze(1) + s.unsqueeze(2) * delta.view(1, 1, -1)
                               + cnt.view(-1, 1, 1) * torch.outer(delta, delta)).float()
        total_s, total_n = s.sum(0), float(cnt.sum())
        out.gram = _reshift_gram(self.gram, total_s, total_n, delta)
        out.shift, out.sums = shift.clone(), s + cnt.view(-1, 1) * delta
        return out

    def to(self, device: str | torch.device) -> GroupedStats:
        """A copy on another device (the statistics are unchanged)."""
        moved = {k: (v.to(device, copy=True) if isinstance(v, torch.Tensor) else v)
                 for k, v in self.__dict__.items()}
        moved["device"] = torch.device(device)
        return GroupedStats(**moved)

    def _copy(self) -> GroupedStats:
        return GroupedStats(**{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()})

    def merge(self, other: GroupedStats) -> GroupedStats:
        """A new ``GroupedStats`` holding both image sets (group k with group k). Neither input is changed."""
        if other.channels is None or other.total_count == 0:
            return self._copy()
        if self.channels is None or self.total_count == 0:
            return other._copy()
        if (other.channels, other.groups, other.chunk, other.tol) != (self.channels, self.groups, self.chunk, self.tol):
            raise GhostmapsError("cannot merge statistics with different channels, groups, chunk or tol: "
                                 f"{(self.channels, self.groups, self.chunk, self.tol)} vs "
                                 f"{(other.channels, other.groups, other.chunk, other.tol)}.")
        o = (other if other.device == self.device else other.to(self.device)).with_shift(self.shift)
        out = self._copy()
        out.gram += o.gram
        if out.group_gram is not None:
            out.group_gram += o.group_gram
        out.sums += o.sums
        out.count += o.count
        out.images += o.images
        out.nonzero += o.nonzero
        out.min, out.max = torch.minimum(self.min, o.min), torch.maximum(self.max, o.max)
        if self.position_sums is not None and o.position_sums is not None and self.spatial == o.spatial:
            out.position_sums = self.position_sums + o.position_sums
        else:
            out.position_sums = None
        return out

    def __add__(self, other: GroupedStats) -> GroupedStats:
        return self.merge(other)

    def all_reduce(self) -> GroupedStats:
        """Sum these statistics over all processes of the default ``torch.distributed`` group, in place.

        Every process must call it with statistics of the same layer, initialised with ``init`` (zero counts
        allowed). All move to one common shift (the count-weighted mean of the shifts) first, so the sums of
        the shifted moments are exact; the result on every process equals a single pass over all images."""
        import torch.distributed as dist

        if self.channels is None:
            raise GhostmapsError("call init(channels, spatial) before all_reduce on a process that saw no images.")
        cnt = torch.tensor([float(self.total_count)], dtype=torch.float64, device=self.device)
        weighted = self.shift * cnt
        dist.all_reduce(cnt)
        dist.all_reduce(weighted)
        common = weighted / cnt.clamp_min(1)
        self.started = bool(cnt.item() > 0)
        if self.total_count:
            rebased = self.with_shift(common)
            self.gram, self.group_gram, self.sums = rebased.gram, rebased.group_gram, rebased.sums
        self.shift = common
        has_positions = torch.tensor([0 if self.position_sums is None else 1], device=self.device)
        dist.all_reduce(has_positions, op=dist.ReduceOp.MIN)
        if int(has_positions) == 0:
            self.position_sums = None
        tensors = [self.gram, self.sums, self.count, self.images, self.nonzero]
        if self.group_gram is not None:
            tensors.append(self.group_gram)
        if self.position_sums is not None:
            tensors.append(self.position_sums)
        for t in tensors:
            dist.all_reduce(t)
        dist.all_reduce(self.min, op=dist.ReduceOp.MIN)
        dist.all_reduce(self.max, op=dist.ReduceOp.MAX)
        return self

    def collapsed(self) -> GroupedStats:
        """A copy with all images in one group: the same totals and baseline, no group matrices (and so no
        bootstrap intervals); (8 + 4K)·C² bytes become 8·C²."""
        out = self._copy()
        out.groups, out.group_gram = 1, None
        if out.sums is not None:
            out.sums = out.sums.sum(0, keepdim=True)
            out.count = out.count.sum(0, keepdim=True)
            out.images = out.images.sum(0, keepdim=True)
        return out

    def state_dict(self) -> dict[str, object]:
        """Plain tensors and numbers (for ``torch.save`` / ``torch.load(weights_only=True)``)."""
        return {k: (v.cpu() if isinstance(v, torch.Tensor) else (str(v) if k == "device" else v))
                for k, v in self.__dict__.items()} | {"spatial": list(self.spatial or ())}

    @classmethod
    def from_state_dict(cls, state: dict[str, object]) -> GroupedStats:
        state = dict(state)
        state["device"] = torch.device("cpu")
        state["spatial"] = tuple(state["spatial"]) if state.get("channels") is not None else None
        count = state.get("count")
        state.setdefault("started", isinstance(count, torch.Tensor) and int(count.sum()) > 0)  # older files
        return cls(**state)
