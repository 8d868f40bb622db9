"""The kernels the statistics share: the one batch fold (:func:`prepare_batch` + :func:`add_moments`), the
channel-matrix view of a batch, the shift algebra, the blocked symmetric Gram product and the normalised
moment. Private to ``analysis.stats``; shapes are checked by the callers.

One batch of N images, X of shape N×C×P (P = H·W positions per image, raw values), folds as

* refuse it (``GhostmapsError``) if any value is NaN or ±inf, *before* anything is computed from it, so a
  refused batch leaves the caller's statistics exactly as they were;
* per channel: min and max (float64) and #{|x| > tol} (``nonzero``) (the noise-matched null's pair products
  are the fold's own, ``analysis.stats._fold``);
* the shift k: the one given (the statistics' own), or for the first batch its channel means rounded to the
  working precision (``_representable_shift``);
* Y = X − k in the working precision (float32, or float64 for float64 maps; in place for an owned copy), then
  per run of images Σ_n Y[n] Y[n]ᵀ (blocked, only the upper row blocks, see ``_add_gram``) and Σ Y per
  channel, both in the working precision for the run and added to float64 accumulators (a float64 reduction
  of float32 maps costs as much again as the whole product).

``LayerStats.update`` folds the whole batch as one run (the one-group case); ``GroupedStats.update`` folds
one run per image group."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from analysis._core.errors import GhostmapsError

DEFAULT_TOL = 1e-6


def _representable_shift(mean: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The shift as the working precision stores it (in float64), so the value subtracted from every batch and
    the value added back when the raw moments are recovered are the same number."""
    return mean.to(dtype).to(torch.float64)


def _require_finite(sums: torch.Tensor) -> None:
    """Refuse maps with NaN or inf (a NaN or inf anywhere makes its channel's float64 sum non-finite)."""
    if not torch.isfinite(sums).all():
        bad = torch.nonzero(~torch.isfinite(sums)).flatten().tolist()
        raise GhostmapsError(
            f"the feature maps hold NaN or inf values (channels {bad[:8]}{'…' if len(bad) > 8 else ''}); check the "
            "inputs and weights (fp16 overflow is a common cause, try float32)."
        )


def _reshift_gram(gram: torch.Tensor, sums: torch.Tensor, count: float, delta: torch.Tensor) -> torch.Tensor:
    """Σ (x − k′)(x − k′)ᵀ from Σ (x − k)(x − k)ᵀ (``gram``) and Σ (x − k) (``sums``) over ``count`` positions,
    with δ = k − k′: G + δ sᵀ + s δᵀ + n δ δᵀ (exact in float64; k′ = 0 gives the raw Σ x xᵀ)."""
    # δ sᵀ + s δᵀ + n δ δᵀ = δ wᵀ + w δᵀ with w = s + (n/2) δ: two rank-one updates, no C×C temporaries
    w = sums + (count / 2) * delta
    # (i, j) and (j, i) are rounded in different orders: symmetric to rounding, not bit for bit (``_mirror``
    # and ``_upper_to_lower_`` make the matrices that are read exactly symmetric)
    return torch.addr(gram, delta, w).addr_(w, delta)


def _upper_to_lower_(m: torch.Tensor, lo: int = 0, hi: int | None = None) -> torch.Tensor:
    """Copy, in place, the upper triangle of the square block ``m[..., lo:hi, lo:hi]`` onto its lower one, so
    that the block is exactly symmetric (a matrix product x xᵀ need not be: BLAS may round (i, j) and (j, i)
    differently); returns ``m``."""
    block = m[..., lo:hi, lo:hi]
    block.copy_(block.triu() + block.triu(1).mT)  # one term of each sum is an exact zero
    return m


def as_batch(maps: torch.Tensor) -> torch.Tensor:
    """``maps`` as a batch: N×C×H×W or N×C as they are, C×H×W as one image (a view, no copy)."""
    if not isinstance(maps, torch.Tensor):
        raise GhostmapsError(f"maps must be a torch.Tensor, got {type(maps).__name__}.")
    if maps.dim() == 3:
        maps = maps.unsqueeze(0)
    if maps.dim() not in (2, 4):
        raise GhostmapsError(
            f"maps must be N×C×H×W (or C×H×W, N×C), got shape {tuple(maps.shape)}; capture a conv-like layer."
        )
    return maps


def as_channel_matrix(maps: torch.Tensor) -> torch.Tensor:
    """View N×C×H×W (or N×C, or C×H×W treated as one image) maps as a C×M matrix of positions."""
    maps = as_batch(maps)
    if maps.dim() == 2:
        return maps.transpose(0, 1)
    return maps.transpose(0, 1).reshape(maps.shape[1], -1)


def normalised_moment(moment: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """moment_ij / √(moment_ii moment_jj) over ``valid`` channels with a positive diagonal; 0 elsewhere (never
    NaN), clipped to [−1, 1], with 1 on the diagonal of those channels. The mask moves to the moment's device."""
    valid = valid.to(moment.device)
    diag = moment.diagonal().clamp_min(0)
    ok = valid & (diag > 0)
    norm = torch.where(ok, diag.sqrt(), torch.ones_like(diag))
    sim = moment / torch.outer(norm, norm)
    if not bool(ok.all()):
        sim.masked_fill_(~torch.outer(ok, ok), 0.0)  # rows and columns of channels without a similarity
    sim.clamp_(-1.0, 1.0)
    sim.diagonal().copy_(ok.to(sim.dtype))
    return sim


DEFAULT_GROUPS = 16
MAX_CHUNK = 16


def block_size(total_images: int | None, groups: int = DEFAULT_GROUPS) -> int:
    """Images per contiguous block when ``total_images`` are spread over ``groups`` groups: an even number (the
    two images of a pair, 2j and 2j + 1, share a block, so a group and a process), enough blocks that every
    group gets some (one pair per block for small sets), at most ``MAX_CHUNK`` so that large sets still
    interleave blocks over the groups (block b goes to group b mod K). An unknown number of images gets blocks
    of one pair."""
    if total_images is None:
        return 2  # unknown length: pairs dealt round-robin, so every group fills from 2K images on
    return max(2, min(MAX_CHUNK, 2 * (int(total_images) // (2 * max(1, groups)))))


SPLIT_CHANNELS = 256


def _row_blocks(c: int) -> list[int]:
    """Start rows of the blocks the symmetric product is split into: 1 block below ``SPLIT_CHANNELS`` channels,
    2 below twice that, else 4."""
    nb = 1 if c < SPLIT_CHANNELS else 2 if c < 2 * SPLIT_CHANNELS else 4
    return [c * i // nb for i in range(nb)] + [c]


def _add_gram(y: torch.Tensor, gram: torch.Tensor, group: torch.Tensor | None) -> None:
    """Add Σ_k y[k] y[k]ᵀ for y of shape m×C×P (each y[k] a contiguous C×P matrix) to ``gram`` (and ``group``).

    Products run per image straight from the N×C×H×W layout (no transposed copy of the maps). The result is
    symmetric, so with b row blocks only block i times rows i.. is computed and added: (b + 1)/(2b) of the
    work (b = 2 from ``SPLIT_CHANNELS`` channels on, 4 from twice that). The blocks below the diagonal of the
    accumulators are left stale; ``_mirror`` fills them from those above when the matrix is read."""
    m = y.shape[0]
    edges = _row_blocks(y.shape[1])
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        out = torch.mm(y[0, lo:hi], y[0, lo:].T)
        for k in range(1, m):
            out.addmm_(y[k, lo:hi], y[k, lo:].T)
        gram[lo:hi, lo:] += out
        if group is not None:
            group[lo:hi, lo:] += out


def _mirror(gram: torch.Tensor) -> torch.Tensor:
    """A full symmetric copy of an accumulator filled by ``_add_gram`` (upper row blocks valid)."""
    return _symmetrise_(gram.clone())


def _symmetrise_(gram: torch.Tensor) -> torch.Tensor:
    """Fill, in place, the row blocks below the diagonal of an accumulator filled by ``_add_gram`` from those
    above it; returns ``gram``."""
    edges = _row_blocks(gram.shape[-1])
    for lo, hi in zip(edges[:-2], edges[1:-1], strict=True):
        gram[..., hi:, lo:hi] = gram[..., lo:hi, hi:].transpose(-1, -2)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        _upper_to_lower_(gram, lo, hi)
    return gram


@dataclass(frozen=True)
class Batch:
    """One batch prepared for folding (:func:`prepare_batch`): everything that does not depend on how the
    images are grouped."""

    y: torch.Tensor  #: N×C×P shifted maps X − k, in the working precision (image n: the C×P matrix y[n])
    shift: torch.Tensor  #: k, float64 C (the given shift, or the first batch's)
    low: torch.Tensor  #: per-channel min of the raw values, float64 C
    high: torch.Tensor  #: per-channel max, float64 C
    nonzero: torch.Tensor  #: per-channel #{|x| > tol}, int64 C

    @property
    def images(self) -> int:
        return self.y.shape[0]

    @property
    def positions(self) -> int:
        """Positions per image (P)."""
        return self.y.shape[2]


_SCRATCH: dict[tuple[str, torch.dtype], torch.Tensor] = {}


def scratch(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A reusable flat work buffer of at least ``numel`` values (its first ``numel`` returned): the per-batch
    temporaries of a stream (the |x| > tol test, the pairs' sums and differences) are as large as the maps, and
    allocating them afresh for every layer and batch costs a page fault per page. Grown on demand; one per
    device and dtype; ``release_scratch`` frees them."""
    key = (str(device), dtype)
    buf = _SCRATCH.get(key)
    if buf is None or buf.numel() < numel:
        _SCRATCH.pop(key, None)  # free the old one before the larger one is made
        with torch.inference_mode(False):  # a normal tensor: written inside and outside inference mode
            buf = _SCRATCH[key] = torch.empty(int(numel), dtype=dtype, device=device)
    return buf[:numel]


def release_scratch() -> None:
    """Free the work buffers of ``scratch`` (a stream calls it when it ends)."""
    _SCRATCH.clear()


@dataclass(frozen=True)
class Scan:
    """What one look at a batch gives (:func:`scan_batch`): the shift and the per-channel range and counts."""

    shift: torch.Tensor  #: k, float64 C (the given shift, or the batch's channel means)
    low: torch.Tensor  #: per-channel min of the raw values, float64 C
    high: torch.Tensor  #: per-channel max, float64 C
    nonzero: torch.Tensor  #: per-channel #{|x| > tol}, int64 C


SCAN_BYTES = 1 << 20


def scan_rows(rows: int, width: int, like: torch.Tensor) -> int:
    """How many of ``rows`` rows of ``width`` values (of ``like``'s dtype and device) one step of a blocked
    pass takes: about ``SCAN_BYTES`` on the CPU, so that the step's reads after the first and its work buffer
    stay in the core's cache; every row at once on other devices (one launch per pass)."""
    if like.device.type != "cpu":
        return rows
    return max(1, min(rows, SCAN_BYTES // (width * like.element_size())))


def scan_batch(x3: torch.Tensor, tol: float, shift: torch.Tensor | None = None) -> Scan:
    """Min, max (refusing NaN/inf first), #{|x| > tol} and the shift of one contiguous N×C×P batch, without
    changing it. The count runs as |x| > tol on a float work buffer (``scratch``) summed per channel: exact
    (0/1 values, at most P per image and channel) and several times faster than counting booleans.

    On the CPU the batch is scanned a block of rows (image × channel) at a time, about ``SCAN_BYTES``: the
    block is read from memory once and its min, max, |x| > tol and count (and mean) run in cache, 1.5–2.5×
    faster on large maps than whole-batch passes (benchmarks/survey_overhead.py). Each value is the one a
    whole-batch reduction gives (min, max and the 0/1 counts are exact; each row's mean is the same row
    reduction)."""
    n, c, p = x3.shape
    x2 = x3.view(n * c, p)
    rows = scan_rows(n * c, p, x2)
    low, high, count = (torch.empty(n * c, dtype=x3.dtype, device=x3.device) for _ in range(3))
    mean = torch.empty(n * c, dtype=x3.dtype, device=x3.device) if shift is None else None
    work = scratch(rows * p, x3.dtype, x3.device)
    for s in range(0, n * c, rows):
        e = min(n * c, s + rows)
        block, buf = x2[s:e], work[:(e - s) * p].view(e - s, p)
        torch.amin(block, dim=1, out=low[s:e])
        torch.amax(block, dim=1, out=high[s:e])
        if mean is not None:
            torch.mean(block, dim=1, out=mean[s:e])
        torch.abs(block, out=buf).gt_(tol)
        torch.sum(buf, dim=1, out=count[s:e])
    # (reducing the contiguous last axis first, then the images, is the faster order)
    low = low.view(n, c).amin(dim=0).to(torch.float64)
    high = high.view(n, c).amax(dim=0).to(torch.float64)
    _require_finite(low + high)  # NaN and ±inf reach the min or max: refuse before anything else
    if mean is not None:  # per image and channel in the working precision (pairwise sums), then over images in
        shift = _representable_shift(mean.view(n, c).to(torch.float64).mean(dim=0), x3.dtype)  # float64
    nonzero = count.view(n, c).to(torch.int64).sum(dim=0)
    return Scan(shift, low, high, nonzero)


def prepare_batch(maps: torch.Tensor, tol: float, shift: torch.Tensor | None = None, *, owned: bool = False
                  ) -> Batch:
    """The shared first half of the batch fold (module docstring) for N×C×H×W or N×C ``maps`` with N·P > 0.

    Refuses NaN/inf before computing anything else, and changes nothing outside the returned ``Batch``
    (except an ``owned`` tensor, which may be shifted in place and is then spent). ``shift``: the statistics'
    shift, or None for the first batch (its channel means)."""
    n, c = maps.shape[:2]
    x = maps if maps.dtype in (torch.float32, torch.float64) else maps.float()
    x = x.contiguous()
    owned = owned or x is not maps  # a converted or compacted copy is ours to change
    x3 = x.view(n, c, -1)  # image k's channels are the contiguous C×P matrix x3[k]
    scan = scan_batch(x3, tol, shift)  # refuses NaN/inf first
    k = scan.shift.to(device=x.device, dtype=x.dtype).view(1, c, 1)
    y = x3.sub_(k) if owned else x3 - k
    return Batch(y, scan.shift, scan.low, scan.high, scan.nonzero)


def add_moments(y: torch.Tensor, gram: torch.Tensor, group: torch.Tensor | None = None) -> torch.Tensor:
    """The shared second half of the batch fold, for one run of images y (m×C×P, shifted): add Σ_n y[n] y[n]ᵀ
    to the upper row blocks of ``gram`` (and ``group``), see ``_add_gram``; return Σ y per channel (summed in
    the working precision, returned as float64)."""
    _add_gram(y, gram, group)
    return y.sum(dim=(0, 2)).to(torch.float64)
