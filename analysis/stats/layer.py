"""Streaming, mergeable per-layer channel statistics.

A layer's maps for a batch, N×C×H×W, are viewed as a C×M matrix X (M = N·H·W positions). ``LayerStats``
accumulates, in float64:

* ``gram``   = Σ (x − k)(x − k)ᵀ over positions (C×C), with a fixed per-channel shift k (see below);
* ``sums``   = Σ (x − k) per channel;
* ``nonzero``= #{|x| > tol} per channel; ``min``/``max`` per channel; ``count`` = M; ``images`` = N.

Cosine and Pearson similarity over all images, channel means and standard deviations, dead and constant
channels, and the fraction of zeros (APoZ) follow from these exactly, so a survey over thousands of images
holds O(C²) per layer instead of the maps. Two stats merge by addition (after moving to a common shift),
which is also how several processes combine them.

The shift k is the first batch's channel means. Accumulating shifted moments is the classical remedy for the
cancellation in E[x²] − E[x]² when a channel's mean is large against its spread; it lets each batch's
product run in float32 (fast) while the running sums stay float64. The unshifted moments are recovered
exactly: Σxxᵀ = G + k sᵀ + s kᵀ + M k kᵀ and Σx = s + M k.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from analysis._core.errors import GhostmapsError
from analysis._core.validation import check_metric
from analysis.stats._kernel import (
    DEFAULT_TOL,
    _reshift_gram,
    _symmetrise_,
    _upper_to_lower_,
    add_moments,
    as_batch,
    prepare_batch,
)

__all__ = ["LayerStats"]


@dataclass
class LayerStats:
    """Sufficient statistics of one layer's channels over any number of images (see module docstring).

    Build with ``LayerStats.from_maps(maps)`` or ``stats = LayerStats(); stats.update(maps)`` per batch.
    ``tol`` is the absolute tolerance below which a value counts as zero (for ``nonzero``/APoZ and dead
    channels) and below which a channel's range counts as constant.
    """

    tol: float = DEFAULT_TOL
    channels: int | None = None
    count: int = 0
    images: int = 0
    shift: torch.Tensor | None = None
    gram: torch.Tensor | None = None
    sums: torch.Tensor | None = None
    nonzero: torch.Tensor | None = None
    min: torch.Tensor | None = None
    max: torch.Tensor | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def from_maps(cls, maps: torch.Tensor, tol: float = DEFAULT_TOL) -> LayerStats:
        """Statistics of one tensor of maps (N×C×H×W)."""
        stats = cls(tol=tol)
        stats.update(maps)
        return stats

    def update(self, maps: torch.Tensor) -> LayerStats:
        """Fold a batch of maps (N×C×H×W, or N×C, or one C×H×W image) into the running statistics; returns self.

        The fold is the one of :mod:`analysis.stats._kernel` with all images as one run (``GroupedStats`` with
        one group gives the same moments). A batch with NaN or inf is refused (``GhostmapsError``) before
        anything changes."""
        maps = as_batch(maps)
        c = maps.shape[1]
        if self.channels is not None and c != self.channels:
            raise GhostmapsError(f"these maps have {c} channels but the statistics hold {self.channels}.")
        if maps.numel() == 0:
            if self.channels is None:
                self._init(c, maps.device)
            return self
        batch = prepare_batch(maps, self.tol, self.shift if self.count else None)  # refuses NaN/inf first
        if self.channels is None:
            self._init(c, maps.device)
        if self.count == 0:
            self.shift = batch.shift.to(self.device)
        self.sums += add_moments(batch.y, self.gram)
        _symmetrise_(self.gram)  # add_moments fills the upper row blocks only
        self.nonzero += batch.nonzero
        self.min = torch.minimum(self.min, batch.low)
        self.max = torch.maximum(self.max, batch.high)
        self.count += batch.images * batch.positions
        self.images += batch.images
        return self

    def _init(self, c: int, device: torch.device) -> None:
        self.channels = c
        self.device = torch.device(device)
        f64 = {"dtype": torch.float64, "device": self.device}
        self.shift = torch.zeros(c, **f64)
        self.gram = torch.zeros(c, c, **f64)
        self.sums = torch.zeros(c, **f64)
        self.nonzero = torch.zeros(c, dtype=torch.int64, device=self.device)
        self.min = torch.full((c,), float("inf"), **f64)
        self.max = torch.full((c,), float("-inf"), **f64)

    def _require(self) -> None:
        if self.channels is None or self.count == 0:
            raise GhostmapsError("these statistics are empty; call update(maps) with at least one batch first.")

    # -- combining -------------------------------------------------------------------------------------------
    def with_shift(self, shift: torch.Tensor) -> LayerStats:
        """The same statistics expressed about another shift (exact float64 algebra)."""
        self._require()
        shift = shift.to(device=self.device, dtype=torch.float64)
        delta = self.shift - shift
        s = self.sums
        gram = _upper_to_lower_(_reshift_gram(self.gram, s, self.count, delta))  # exactly symmetric
        return LayerStats(self.tol, self.channels, self.count, self.images, shift.clone(), gram,
                          s + self.count * delta, self.nonzero.clone(), self.min.clone(), self.max.clone(),
                          self.device)

    def merge(self, other: LayerStats) -> LayerStats:
        """A new ``LayerStats`` holding both: exactly what one pass over both image sets would give
        (up to float rounding). Neither input is changed."""
        if other.channels is None or other.count == 0:
            return self.with_shift(self.shift) if self.count else LayerStats(self.tol)
        if self.channels is None or self.count == 0:
            return other.with_shift(other.shift)
        if other.channels != self.channels:
            raise GhostmapsError(f"cannot merge statistics of {self.channels} and {other.channels} channels.")
        if other.tol != self.tol:
            raise GhostmapsError(f"cannot merge statistics made with tol={self.tol} and tol={other.tol}.")
        o = other.with_shift(self.shift.to(other.device)) if other.device == self.device else \
            other.to(self.device).with_shift(self.shift)
        return LayerStats(self.tol, self.channels, self.count + o.count, self.images + o.images, self.shift.clone(),
                          self.gram + o.gram, self.sums + o.sums, self.nonzero + o.nonzero,
                          torch.minimum(self.min, o.min), torch.maximum(self.max, o.max), self.device)

    def __add__(self, other: LayerStats) -> LayerStats:
        return self.merge(other)

    def to(self, device: str | torch.device) -> LayerStats:
        """A copy on another device."""
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        moved["device"] = torch.device(device)
        return LayerStats(**moved)

    # -- derived quantities ----------------------------------------------------------------------------------
    @property
    def mean(self) -> torch.Tensor:
        """Per-channel mean over all positions."""
        self._require()
        return self.shift + self.sums / self.count

    @property
    def covariance(self) -> torch.Tensor:
        """C×C population covariance of the channels over all positions."""
        self._require()
        centred = torch.outer(self.sums, self.sums).div_(self.count)
        torch.sub(self.gram, centred, out=centred)  # the same numbers as gram − outer/count, one temporary less
        return torch.add(centred, centred.T).div_(2 * self.count)

    @property
    def second_moment(self) -> torch.Tensor:
        """C×C uncentred second moment E[x xᵀ] over all positions (what cosine similarity uses)."""
        self._require()
        raw = _reshift_gram(self.gram, self.sums, self.count, self.shift)
        return (raw + raw.T) / (2 * self.count)

    @property
    def variance(self) -> torch.Tensor:
        """Per-channel population variance (the diagonal of ``covariance``, without the C×C matrix)."""
        self._require()
        return (self.gram.diagonal() - self.sums * self.sums / self.count) / self.count

    @property
    def std(self) -> torch.Tensor:
        """Per-channel population standard deviation."""
        return self.variance.clamp_min(0).sqrt()

    @property
    def dead(self) -> torch.Tensor:
        """Channels whose every value is within ``tol`` of zero (e.g. a ReLU channel that never fires)."""
        self._require()
        return torch.maximum(self.max.abs(), self.min.abs()) <= self.tol

    @property
    def constant(self) -> torch.Tensor:
        """Channels that are not dead but take (within ``tol``) a single value everywhere, or whose variance
        is below 1e-12 of the layer's largest (lost in rounding)."""
        self._require()
        var = self.variance
        flat = (self.max - self.min <= self.tol) | (var <= var.max().clamp_min(0) * 1e-12)
        return flat & ~self.dead

    @property
    def apoz(self) -> torch.Tensor:
        """Average percentage of zeros: per channel, the fraction of positions with |x| ≤ tol."""
        self._require()
        return 1.0 - self.nonzero.to(torch.float64) / self.count

    def similarity_matrix(self, metric: str = "pearson") -> torch.Tensor:
        """C×C channel similarity from the moments: ``"cosine"`` (uncentred) or ``"pearson"`` (centred).

        Rows and columns of dead or constant channels are 0 (never NaN); the diagonal of the other channels
        is 1. Values are clipped to [−1, 1].
        """
        valid = ~(self.dead | self.constant)
        if not bool(valid.any()):  # no channel has a similarity: the all-zero matrix, without the moments
            return torch.zeros(self.channels, self.channels, dtype=torch.float64, device=self.device)
        moment = self.second_moment if check_metric(metric) == "cosine" else self.covariance
        return _normalised_(moment, valid)


def _normalised_(moment: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``normalised_moment`` of a moment the caller no longer needs, computed in place (the same numbers)."""
    diag = moment.diagonal().clamp_min(0)
    ok = valid.to(moment.device) & (diag > 0)
    norm = torch.where(ok, diag.sqrt(), torch.ones_like(diag))
    sim = moment.div_(torch.outer(norm, norm))
    if not bool(ok.all()):
        sim.masked_fill_(~torch.outer(ok, ok), 0.0)  # rows and columns of channels without a similarity
    sim.clamp_(-1.0, 1.0)
    sim.diagonal().copy_(ok.to(sim.dtype))
    return sim
