"""How ``GroupedStats`` folds a stream of batches: the streaming accumulators (:mod:`analysis.stats._live`),
the pairs, the images waiting for a partner, and the one conversion to the settled C×C fields when the stream
ends. A mixin of :class:`analysis.stats.grouped.GroupedStats`, kept apart so each module does one job."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Self

import torch

from analysis._core.errors import GhostmapsError
from analysis.stats._kernel import _reshift_gram, scan_batch, scan_rows, scratch
from analysis.stats._live import add_products, add_symmetric, block_layout, settle
from analysis.stats._pairs import _add_upper
from analysis.stats.moments import position_subset


class StreamFold:
    """``update``/``finish`` of :class:`~analysis.stats.grouped.GroupedStats` (which holds the fields)."""

    # the fields of GroupedStats this mixin reads and writes
    groups: int
    chunk: int
    tol: float
    positions: int | None
    seed: int
    channels: int | None
    shift: Any
    sums: Any
    count: Any
    images: Any
    pair_sums: Any
    pair_count: Any
    nonzero: Any
    sampled: Any
    min: Any
    max: Any
    pending: dict[int, tuple[int, torch.Tensor, float]]
    device: torch.device
    started: bool
    live_u: torch.Tensor | None
    live_v: torch.Tensor | None

    def update(self, maps: torch.Tensor, first_index: int | Sequence[int] = 0, *, owned: bool = False
               ) -> Self:
        """Fold a batch of maps (N×C×H×W or N×C). ``first_index``: the position of its first image in the image
        set (the others follow), or the N positions themselves. The maps are read and never changed
        (``owned`` is accepted for callers of earlier versions and has no effect). A batch with NaN or inf is
        refused before anything changes."""
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
            x, weight = self._subsample(maps.reshape(n, c, p), index, p), p / int(self.positions)
        live = self.__dict__.get("live_u")
        dtype = live.dtype if live is not None else x.dtype if x.dtype in (torch.float32, torch.float64) \
            else torch.float32
        x3 = x.to(dtype).contiguous().view(n, c, -1)  # read, never changed (``owned`` is no longer needed)
        # refuses NaN/inf before anything changes (analysis.stats._kernel)
        scan = scan_batch(x3, self.tol, self.shift if self.started else None)
        if self.channels is None:
            self.init(c, spatial, maps.device)
        if not self.started:  # a Python flag, not a look at the device counts (no host sync per batch)
            self.shift, self.started = scan.shift.to(self.device), True
        self.min, self.max = torch.minimum(self.min, scan.low), torch.maximum(self.max, scan.high)
        self.nonzero += scan.nonzero
        self.sampled += n * x3.shape[2]
        self._fold(x3, index, p, weight)
        return self

    def _subsample(self, x: torch.Tensor, index: list[int], p: int) -> torch.Tensor:
        """The seeded m positions of each image's pair (``position_subset``), gathered in one op: N×C×m."""
        m = int(self.positions)
        idx = torch.stack([position_subset(self.seed, i // 2, p, m, x.device) for i in index])
        return torch.gather(x, 2, idx.unsqueeze(1).expand(x.shape[0], x.shape[1], m))

    def _streaming(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The streaming accumulators (made, zero, on the first batch after ``init`` or a settle)."""
        if self.__dict__.get("live_u") is None:
            size = block_layout(self.channels).size
            with torch.inference_mode(False):  # normal tensors: added to in place inside and outside the mode
                self.live_u = torch.zeros(self.groups, size, dtype=dtype, device=self.device)
                self.live_v = torch.zeros(self.groups, size, dtype=dtype, device=self.device)
        return self.live_u, self.live_v

    def _fold(self, x: torch.Tensor, index: list[int], p: int, weight: float) -> None:
        """Fold raw maps x (N×C×Q, Q folded positions of P, each weighted by ``weight`` = P/Q): pairs complete
        in this batch as u = x_a + x_b − 2k and v = x_a − x_b products (:mod:`analysis.stats._live`), the others
        as single images (waiting in ``pending`` for their partner)."""
        live_u, live_v = self._streaming(x.dtype)
        c, q = x.shape[1], x.shape[2]
        layout = block_layout(c)
        k = self.shift.to(device=x.device, dtype=x.dtype).view(1, c, 1)
        root_w = math.sqrt(weight)
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
        work = scratch(2 * max((len(a) for a, _ in runs.values()), default=0) * c * q, x.dtype, x.device)
        for g, (a, b) in runs.items():
            xa, xb, m = self._rows(x, a), self._rows(x, b), len(a)
            # the run's images side by side, C × m·Q (written through a permuted view: no transposed copy)
            u = work[:m * c * q].view(c, m * q)
            v = work[m * c * q:2 * m * c * q].view(c, m * q)
            part = self._pair_rows(xa, xb, k, u, v)
            add_products(live_u[g], u, layout, weight)
            add_products(live_v[g], v, layout, weight)
            part = part.to(torch.float64) * weight
            self.sums[g] += part
            self.pair_sums[g] += part
            self.count[g] += 2 * len(a) * p
            self.pair_count[g] += 2 * len(a) * p
            self.images[g] += 2 * len(a)
        for t in singles:
            i, g = index[t], self.group_of(index[t])
            yt = x[t:t + 1] - k
            if weight != 1.0:
                yt.mul_(root_w)
            add_products(live_u[g], yt[0], layout)  # y yᵀ to both: the Gram only
            add_products(live_v[g], yt[0], layout)
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
        live_u, live_v = self.__dict__.get("live_u"), self.__dict__.get("live_v")
        layout = block_layout(self.channels)
        if live_u is not None:  # h = y_a y_bᵀ + y_b y_aᵀ: + h to U, − h to V (the cross product only)
            a = torch.mm(ya.to(live_u.dtype), yb.to(live_u.dtype).T)
            h = a + a.T
            add_symmetric(live_u[g], h, layout)
            add_symmetric(live_v[g], h, layout, -1.0)
        else:  # settled statistics (a merge completing a pair): the float64 total and the group's vector
            a = torch.mm(ya, yb.T).to(torch.float64)
            h = a + a.T
            _add_upper(self.cross, h)
            if self.group_cross is not None:
                add_symmetric(self.group_cross[g], h, layout)
        self.pair_sums[g] += (ya.sum(dim=1) + yb.sum(dim=1)).to(torch.float64) * root_w
        self.pair_count[g] += 2 * p

    @staticmethod
    def _pair_rows(xa: torch.Tensor, xb: torch.Tensor, k: torch.Tensor, u: torch.Tensor, v: torch.Tensor
                   ) -> torch.Tensor:
        """Write u = y_a + y_b and v = y_a − y_b (= x_a − x_b) of a run of m pairs (xa, xb: m×C×Q) into the
        C × m·Q matrices ``u``, ``v`` (through permuted views: no transposed copy); return Σ u per channel (in
        the working precision). A block of channels at a time (``scan_rows``), so that u's shift and sum run
        in cache: the same values as whole-matrix passes."""
        m, c, q = xa.shape
        rows = scan_rows(c, m * q, u)
        part = torch.empty(c, dtype=u.dtype, device=u.device)
        for lo in range(0, c, rows):
            hi = min(c, lo + rows)
            ub, vb = u[lo:hi], v[lo:hi]
            torch.add(xa[:, lo:hi], xb[:, lo:hi], out=ub.view(hi - lo, m, q).permute(1, 0, 2)).sub_(
                k[:, lo:hi], alpha=2)  # y_a + y_b
            torch.sum(ub, dim=1, out=part[lo:hi])
            torch.sub(xa[:, lo:hi], xb[:, lo:hi], out=vb.view(hi - lo, m, q).permute(1, 0, 2))
        return part

    @staticmethod
    def _rows(y: torch.Tensor, rows: list[int]) -> torch.Tensor:
        if rows == list(range(rows[0], rows[0] + 2 * len(rows), 2)):
            return y[rows[0]:rows[-1] + 1:2]  # the usual case, pairs side by side: a view
        return y[rows]

    def finish(self, recentre: bool = False) -> Self:
        """End a stream: forget the images still waiting for a partner (an odd last image: they stay in the Gram
        totals and out of the null) and settle the streaming accumulators. ``recentre=True`` also moves the
        statistics to their own mean (Pearson's centre), on the way when it can (cheaper than ``with_shift``).
        ``survey`` calls it when the stream ends; ``update`` after it starts new pairs. Returns self."""
        self.pending = {}
        if self.channels is not None:
            self._settle(recentre=recentre and self.total_count > 0)
        return self

    def _settle(self, recentre: bool = False) -> None:
        """Convert the streaming accumulators into the C×C fields (adding to them if they exist; making them
        zero if neither exists); ``recentre``: move everything to the mean."""
        d = self.__dict__
        u, v = d.get("live_u"), d.get("live_v")
        self.live_u = self.live_v = None
        c, k = self.channels, self.groups
        fresh = d.get("gram") is None
        if u is None:
            if fresh:
                f64 = {"dtype": torch.float64, "device": self.device}
                self.gram, self.cross = torch.zeros(c, c, **f64), torch.zeros(c, c, **f64)
                f32 = {"dtype": torch.float32, "device": self.device}
                size = block_layout(c).size
                self.group_gram = torch.zeros(k, size, **f32) if k > 1 else None
                self.group_cross = torch.zeros(k, size, **f32) if k > 1 else None
            if recentre:
                self._recentre_settled()
            return
        cnt, pcnt = self.count.to(torch.float64), self.pair_count.to(torch.float64)
        delta = -(self.sums.sum(0) / cnt.sum()) if recentre and fresh else None
        move = None if delta is None else (delta, self.sums, cnt, self.pair_sums, pcnt)
        done = settle(u, v, block_layout(c), grouped=k > 1, move=move)
        del u, v
        if not fresh:
            self.gram, self.cross = self.gram + done.gram, self.cross + done.cross
            if k > 1:
                self.group_gram, self.group_cross = self.group_gram + done.group_gram, \
                    self.group_cross + done.group_cross
            if recentre:
                self._recentre_settled()
            return
        self.gram, self.cross = done.gram, done.cross
        self.group_gram, self.group_cross = done.group_gram, done.group_cross
        if delta is not None:  # the groups were moved on the way; the rest moves exactly here
            self._moved(self.shift - delta, delta, cnt, pcnt)

    def _moved(self, shift: torch.Tensor, delta: torch.Tensor, cnt: torch.Tensor, pcnt: torch.Tensor) -> None:
        """Move, in place, everything but the group vectors to ``shift`` (δ = old shift − new shift; ``cnt`` and
        ``pcnt`` the per-group positions and paired positions): the float64 totals by exact algebra, the sums,
        the images waiting for a partner. ``with_shift`` and the recentring settle share it."""
        self.gram = _reshift_gram(self.gram, self.sums.sum(0), float(cnt.sum()), delta)
        # cross: Σ_pairs over both orders of (y_a + δ)(y_b + δ)ᵀ = H + δ spᵀ + sp δᵀ + (paired positions) δδᵀ
        self.cross = _reshift_gram(self.cross, self.pair_sums.sum(0), float(pcnt.sum()), delta)
        self.shift = shift
        self.sums = self.sums + cnt.view(-1, 1) * delta
        self.pair_sums = self.pair_sums + pcnt.view(-1, 1) * delta
        self.pending = {j: (i, y + (delta * w).to(y.dtype).view(-1, 1), w) for j, (i, y, w) in self.pending.items()}

    def _recentre_settled(self) -> None:
        """Move settled statistics to their own mean (``with_shift``), in place."""
        moved = self.with_shift(self.shift + self.sums.sum(0) / self.count.sum().to(torch.float64))
        self.__dict__.update(moved.__dict__)

