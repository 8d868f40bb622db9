"""Cheap-op reconstruction: how well one feature map can be made from another by a d x d depthwise conv.

GhostNet (Han et al., CVPR 2020) builds half of a layer's maps ("ghosts") from the other half
("intrinsic" maps) with cheap d x d depthwise convolutions. This module measures, before any training,
how well that works on real maps:

* :func:`fit_cheap_op` - the best d x d filter (plus bias) making map(s) ``dst`` from ``src``, in closed form.
* :func:`reconstruction_table` - the paper's Table 1 protocol (MSE per pair for d = 1, 3, 5, 7) plus a
  random-pair baseline.
* :func:`best_sources` - for every channel, the other channel that reconstructs it best (all C x C fits at once
  from shifted Gram products).
* :func:`ghostability` / :func:`suggest_ratio` - pick intrinsic channels and a Ghost-module structure for a
  layer and report its relative reconstruction error.

The model. With ``x`` the source map zero-padded by ``p = d // 2`` and ``K`` a d x d kernel, the prediction is
the cross-correlation that ``F.conv2d(src, K[None, None], b, padding=p)`` computes::

    y_hat[n, h, w] = sum_{u, v} K[u, v] * x[n, h + u, w + v] + b

That is linear in ``theta = (K, b)``: each of the d^2 shifts of ``x`` is one regressor column. Over all
``M = N * H * W`` positions, with ``S`` the d^2 x M matrix of shifted copies and ``y`` the flattened target,
the bias is removed by centring and the kernel solves the ridge-regularised normal equations::

    Cov = S S^T - s s^T / M,   c = S y - s * sum(y) / M,        (s = S 1, the row sums)
    K   = (Cov + lam I)^-1 c,  b = (sum(y) - s . K) / M,
    lam = ridge * trace(Cov) / d^2   (scale-free; a dead source has Cov = 0 and gets K = 0)

all accumulated in float64. Errors: ``SSE = sum (y - y_hat)^2``, ``mse = SSE / M`` and the relative error
``rel_error = SSE / sum (y - mean y)^2`` = MSE / variance of ``dst`` (``r2 = 1 - rel_error``). A constant
``dst`` has variance 0: its relative error is defined as 0 when the fit is exact (``SSE`` at rounding level,
which it always is with ``bias=True``), and otherwise ``SSE`` over an epsilon floor (``1e-12 * sum y^2``), a
large but finite number. Nothing returned is ever NaN.

All functions take torch tensors or numpy arrays on any device, compute there (float64; MPS falls back to
CPU, which lacks float64 there) and return plain CPU data (numpy arrays, Python numbers).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ghostnet._utils import check_odd_size, check_ratio

from ._io import atomic_write
from .errors import GhostmapsError

__all__ = [
    "CheapOpFit",
    "ReconstructionTable",
    "BestSources",
    "Ghostability",
    "RatioSuggestion",
    "fit_cheap_op",
    "reconstruction_table",
    "best_sources",
    "ghostability",
    "suggest_ratio",
]

#: Default ridge, relative to the mean variance of the shifted source copies. Small enough that exact
#: (noiseless) relations are recovered to ~1e-7, large enough that rank-deficient sources stay solvable.
DEFAULT_RIDGE = 1e-8
#: Memory budget (bytes) for one block of float64 shifted copies.
_CHUNK_BYTES = 64 * 2**20
#: Relative threshold under which a sum of squares counts as zero (rounding level of float64 sums).
_REL_TOL = 1e-12


# ----------------------------------------------------------------------------------------------------------
# input checks


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    """A detached floating tensor view of ``x`` (never modified), rejecting non-finite values."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}; "
                        f"convert it with torch.as_tensor({name}) first")
    x = x.detach()
    if x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} has dtype {x.dtype}; pass real-valued feature maps (float tensor)")
    if x.device.type == "mps":  # no float64 there
        x = x.cpu()
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise GhostmapsError(f"{name} contains NaN or inf; clean the maps first (e.g. torch.nan_to_num({name}))")
    return x


def _check_d(d: Any, name: str = "d") -> int:
    return check_odd_size(d, name, GhostmapsError)


def _check_ridge(ridge: Any) -> float:
    if not isinstance(ridge, (int, float)) or isinstance(ridge, bool) or not math.isfinite(ridge) or ridge < 0:
        raise GhostmapsError(f"ridge must be a finite number >= 0 (relative to the source variance); got {ridge!r}, "
                         f"use the default {DEFAULT_RIDGE}")
    return float(ridge)


def _check_ratio(ratio: Any, name: str = "ratio") -> int:
    return check_ratio(ratio, name, GhostmapsError)


def _layer_maps(maps: Any, name: str = "maps") -> torch.Tensor:
    """``maps`` as an N x C x H x W tensor (a single C x H x W image is accepted)."""
    x = _as_tensor(maps, name)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or 0 in x.shape:
        raise GhostmapsError(f"{name} must be a non-empty N x C x H x W tensor of one layer's feature maps "
                         f"(or C x H x W for one image); got shape {tuple(x.shape)}")
    return x


# ----------------------------------------------------------------------------------------------------------
# the shared normal-equation solver


def _shifted(x: torch.Tensor, d: int) -> torch.Tensor:
    """B x H x W -> B x d^2 x (H*W): the d^2 zero-padded shifted copies, in conv2d's kernel order (u*d + v)."""
    return F.unfold(x.unsqueeze(1), kernel_size=d, padding=d // 2)


def _solve(sxx: torch.Tensor, sx: torch.Tensor, sxy: torch.Tensor, sy: torch.Tensor, m: int,
           ridge: float, bias: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Solve the (centred, ridge-regularised) normal equations for batches of sources and targets.

    ``sxx`` (B, q, q) = sum S S^T, ``sx`` (B, q) = sum S, ``sxy`` (B, q, R) = sum S y for R targets,
    ``sy`` (B or 1, R) = sum y. Returns ``theta`` (B, q, R), ``b`` (B, R) and the quadratic pieces
    ``cov`` and ``cross`` (used for the SSE formula).
    """
    q = sxx.shape[-1]
    if bias:
        cov = sxx - sx[..., :, None] * sx[..., None, :] / m
        cross = sxy - sx[..., :, None] * sy[..., None, :] / m
    else:
        cov, cross = sxx, sxy
    eye = torch.eye(q, dtype=sxx.dtype, device=sxx.device)
    if ridge > 0:
        tr = torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1).clamp_min(0)
        tr_raw = torch.diagonal(sxx, dim1=-2, dim2=-1).sum(-1)
        lam = ridge * (tr + 1e-14 * tr_raw) / q
        lam = torch.where(lam > 0, lam, torch.ones_like(lam))  # dead source: cov = cross = 0, any lam gives 0
        theta = torch.linalg.solve(cov + lam[..., None, None] * eye, cross)
    else:
        theta = torch.linalg.pinv(cov, hermitian=True) @ cross
    if bias:
        b = (sy - (sx[..., :, None] * theta).sum(-2)) / m
    else:
        b = torch.zeros(theta.shape[:-2] + theta.shape[-1:], dtype=theta.dtype, device=theta.device)
    return theta, b, cov, cross


def _relative(sse: np.ndarray, ss: np.ndarray, sumsq: np.ndarray) -> np.ndarray:
    """SSE / centred sum of squares, epsilon-safe: 0 for an exact fit of a constant target (see module doc)."""
    sse, ss, sumsq = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (sse, ss, sumsq)))
    tol = _REL_TOL * sumsq
    const = ss <= tol
    denom = np.where(const, np.maximum(tol, np.finfo(np.float64).tiny), ss)
    rel = sse / denom
    return np.where(const & (sse <= tol), 0.0, rel)


# ----------------------------------------------------------------------------------------------------------
# fit_cheap_op


@dataclass
class CheapOpFit:
    """Result of :func:`fit_cheap_op` (one pair, or P pairs when ``batched``).

    ``kernel`` (d x d, or P x d x d) and ``bias`` reproduce the prediction as
    ``F.conv2d(src[:, None], kernel[None, None], bias, padding=d // 2)`` (cross-correlation, zero padding).
    ``mse`` = mean squared residual, ``rel_error`` = MSE / variance of dst (0 for an exactly fitted constant
    dst), ``r2`` = 1 - rel_error. Floats for a single pair, length-P arrays when batched.
    """

    kernel: np.ndarray
    bias: Any
    mse: Any
    rel_error: Any
    r2: Any
    d: int
    batched: bool = False

    def predict(self, src: Any) -> torch.Tensor:
        """Apply the fitted op(s) to ``src`` (same layout as in the fit) and return the prediction (float64)."""
        s = _as_tensor(src, "src").to(torch.float64)
        k = torch.as_tensor(np.asarray(self.kernel), dtype=torch.float64, device=s.device)
        b = torch.as_tensor(np.asarray(self.bias), dtype=torch.float64, device=s.device).reshape(-1)
        if self.batched:
            p, n, h, w = s.shape
            out = F.conv2d(s.permute(1, 0, 2, 3), k[:, None], b, padding=self.d // 2, groups=p)
            return out.permute(1, 0, 2, 3)
        shape = s.shape
        out = F.conv2d(s.reshape(-1, 1, *shape[-2:]), k[None, None], b, padding=self.d // 2)
        return out.reshape(shape)

    def to_dict(self) -> dict[str, Any]:
        return {"d": self.d, "batched": self.batched, "kernel": np.asarray(self.kernel).tolist(),
                "bias": _plain(self.bias), "mse": _plain(self.mse), "rel_error": _plain(self.rel_error),
                "r2": _plain(self.r2)}


def _plain(v: Any) -> Any:
    """numpy -> JSON-able Python data; non-finite floats become None."""
    if isinstance(v, np.ndarray):
        return [_plain(a) for a in v.tolist()] if v.ndim else _plain(v.item())
    if isinstance(v, list):
        return [_plain(a) for a in v]
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def fit_cheap_op(src: Any, dst: Any, d: int = 3, bias: bool = True, ridge: float = DEFAULT_RIDGE) -> CheapOpFit:
    """Best d x d depthwise filter (plus bias) making ``dst`` from ``src``, by closed-form least squares.

    ``src`` and ``dst`` are N x H x W (one pair over N images; H x W is taken as N = 1) or P x N x H x W
    (P pairs fitted at once, batched normal equations). The fit minimises
    ``sum (dst - conv2d(src, K, b, padding=d//2))^2`` over all N*H*W positions; see the module docstring
    for the formulas and the ridge. Vectorised: memory is bounded by chunking the P pairs.
    """
    d = _check_d(d)
    ridge = _check_ridge(ridge)
    s = _as_tensor(src, "src")
    t = _as_tensor(dst, "dst")
    if s.dim() not in (2, 3, 4) or 0 in s.shape:
        raise GhostmapsError(f"src must be N x H x W (one pair) or P x N x H x W (P pairs); got shape {tuple(s.shape)}")
    if tuple(t.shape) != tuple(s.shape):
        raise GhostmapsError(f"dst must have the same shape as src, got src {tuple(s.shape)} and dst {tuple(t.shape)}; "
                         f"pass matching maps, e.g. src = maps[:, i] and dst = maps[:, j]")
    batched = s.dim() == 4
    s4 = s.reshape((1,) * (4 - s.dim()) + tuple(s.shape))
    t4 = t.to(s.device).reshape(s4.shape)
    p, n, h, w = s4.shape
    q, m = d * d, n * h * w
    chunk = max(1, _CHUNK_BYTES // (8 * q * m))
    kernels, biases, sses, sss, sumsqs = [], [], [], [], []
    for p0 in range(0, p, chunk):
        xs = s4[p0:p0 + chunk].to(torch.float64)
        y = t4[p0:p0 + chunk].to(torch.float64).reshape(-1, m)
        pc = xs.shape[0]
        x = _shifted(xs.reshape(pc * n, h, w), d).reshape(pc, n, q, h * w).transpose(1, 2).reshape(pc, q, m)
        sxx = x @ x.transpose(1, 2)
        sx = x.sum(-1)
        sxy = x @ y.unsqueeze(-1)
        sy = y.sum(-1, keepdim=True)
        theta, b, _, _ = _solve(sxx, sx, sxy, sy, m, ridge, bias)
        theta, b = theta[..., 0], b[..., 0]
        resid = y - torch.einsum("pq,pqm->pm", theta, x) - b[:, None]
        sses.append((resid * resid).sum(-1))
        sss.append(((y - y.mean(-1, keepdim=True)) ** 2).sum(-1))
        sumsqs.append((y * y).sum(-1))
        kernels.append(theta.reshape(pc, d, d))
        biases.append(b)
    kernel = torch.cat(kernels).cpu().numpy()
    bvec = torch.cat(biases).cpu().numpy()
    sse = torch.cat(sses).cpu().numpy()
    rel = _relative(sse, torch.cat(sss).cpu().numpy(), torch.cat(sumsqs).cpu().numpy())
    mse = sse / m
    if batched:
        return CheapOpFit(kernel, bvec, mse, rel, 1.0 - rel, d, True)
    return CheapOpFit(kernel[0], float(bvec[0]), float(mse[0]), float(rel[0]), float(1.0 - rel[0]), d, False)


# ----------------------------------------------------------------------------------------------------------
# all C x C fits of a layer from shifted Gram products


@dataclass
class _PairFits:
    """All source -> target fits of one layer. Index ``[i, j]`` = making channel j from channel i."""

    d: int
    theta: np.ndarray  # (C, d*d, C): kernel of j from i is theta[i, :, j]
    bias: np.ndarray  # (C, C)
    sse: np.ndarray  # (C, C), diagonal 0 (a channel makes itself exactly)
    ss: np.ndarray  # (C,) centred sum of squares of each channel
    sumsq: np.ndarray  # (C,) uncentred sum of squares
    mean: np.ndarray  # (C,)
    m: int  # positions N*H*W
    dead: np.ndarray  # (C,) bool, all-zero channels

    @property
    def rel(self) -> np.ndarray:
        return _relative(self.sse, self.ss[None, :], self.sumsq[None, :])


def _pair_fits(x: torch.Tensor, d: int, ridge: float) -> _PairFits:
    """Fit every (source i, target j) pair with d^2 matrix products instead of C^2 separate fits.

    Accumulated over image and channel chunks (float64): per source i the Gram block
    ``A_i[k, l] = S_k(i) . S_l(i)`` (C x q x q, batched matmul) and the row sums ``s_i``; for all pairs the
    cross products ``B[i, k, j] = S_k(i) . y_j`` (one (C q) x M by M x C matmul). The targets are the
    unshifted maps, i.e. the centre shift, so ``sum y_j`` and ``sum y_j^2`` come for free. Then one batched
    solve of C systems of size d^2 with C right-hand sides each, and
    ``SSE_ij = yy_j - 2 theta . c + theta^T Cov theta`` (centred quantities).
    """
    n, c, h, w = x.shape
    q, hw = d * d, h * w
    m = n * hw
    dev = x.device
    dt = torch.float64
    sxx = torch.zeros(c, q, q, dtype=dt, device=dev)
    sx = torch.zeros(c, q, dtype=dt, device=dev)
    sxy = torch.zeros(c, q, c, dtype=dt, device=dev)
    per_chan_img = 8 * q * hw
    n_chunk = max(1, _CHUNK_BYTES // (per_chan_img * c))
    c_chunk = max(1, min(c, _CHUNK_BYTES // (per_chan_img * n_chunk)))
    for n0 in range(0, n, n_chunk):
        xb = x[n0:n0 + n_chunk].to(dt)
        nb = xb.shape[0]
        y = xb.permute(1, 0, 2, 3).reshape(c, nb * hw)
        for c0 in range(0, c, c_chunk):
            cb = min(c_chunk, c - c0)
            src = xb[:, c0:c0 + cb].reshape(nb * cb, h, w)
            s = _shifted(src, d).reshape(nb, cb, q, hw).permute(1, 2, 0, 3).reshape(cb, q, nb * hw)
            sxx[c0:c0 + cb] += s @ s.transpose(1, 2)
            sx[c0:c0 + cb] += s.sum(-1)
            sxy[c0:c0 + cb] += (s.reshape(cb * q, -1) @ y.T).reshape(cb, q, c)
    ctr = q // 2
    sy = sx[:, ctr].clone()  # sum of each channel's own map (centre shift = the map itself)
    syy = sxx[:, ctr, ctr].clone()
    theta, b, cov, cross = _solve(sxx, sx, sxy, sy[None, :], m, ridge, bias=True)
    yy = (syy - sy * sy / m).clamp_min(0)
    sse = yy[None, :] - 2 * (theta * cross).sum(1) + (theta * (cov @ theta)).sum(1)
    sse = sse.clamp_min(0)
    sse.fill_diagonal_(0.0)
    dead = (x.abs().amax(dim=(0, 2, 3)) == 0).cpu().numpy()
    return _PairFits(d=d, theta=theta.cpu().numpy(), bias=b.cpu().numpy(), sse=sse.cpu().numpy(),
                     ss=yy.cpu().numpy(), sumsq=syy.cpu().numpy(), mean=(sy / m).cpu().numpy(), m=m, dead=dead)


# ----------------------------------------------------------------------------------------------------------
# best_sources


@dataclass
class BestSources:
    """Result of :func:`best_sources`: the best single-channel source of every channel.

    ``source[j]`` is the channel i != j whose fitted d x d op reconstructs channel j best (-1: none usable,
    i.e. ``dead[j]`` or no allowed non-dead source; then ``kernel`` is 0, ``bias`` the channel mean and
    ``rel_error`` 1, or 0 for a dead/constant channel). ``kernel[j]`` (d x d) and ``bias[j]`` make channel j
    as ``conv2d(maps[:, source[j]], kernel[j], bias[j], padding=d//2)``. ``rel_error[j]`` = MSE / variance
    of channel j, ``mse[j]`` the MSE. ``dead[j]``: channel j is all zero (trivially reconstructed, never a
    source). ``error_matrix[i, j]``: relative error of making j from i; inf where i is not allowed
    (i == j, dead or excluded).
    """

    d: int
    source: np.ndarray
    rel_error: np.ndarray
    mse: np.ndarray
    kernel: np.ndarray
    bias: np.ndarray
    dead: np.ndarray
    error_matrix: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {"d": self.d, "source": self.source.tolist(), "rel_error": _plain(self.rel_error),
                "mse": _plain(self.mse), "kernel": self.kernel.tolist(), "bias": _plain(self.bias),
                "dead": self.dead.tolist(), "error_matrix": _plain(self.error_matrix)}

    def __str__(self) -> str:
        lines = [f"BestSources(d={self.d}, C={len(self.source)})", "  dst <- src   rel_error"]
        for j, (i, e) in enumerate(zip(self.source, self.rel_error, strict=True)):
            note = "  (dead)" if self.dead[j] else ""
            lines.append(f"  {j:>3} <- {i:>3}   {e:.4g}{note}")
        return "\n".join(lines)


def _channel_list(idx: Any, c: int, name: str) -> list[int]:
    if idx is None:
        return []
    if isinstance(idx, (int, np.integer)):
        idx = [idx]
    out = []
    for i in idx:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not -c <= i < c:
            raise GhostmapsError(f"{name} must hold channel indices in [0, {c}); got {i!r}")
        out.append(int(i) % c)
    return out


def best_sources(maps: Any, d: int = 3, exclude: Iterable[int] | None = None,
                 ridge: float = DEFAULT_RIDGE) -> BestSources:
    """For every channel j of a layer, the channel i != j that reconstructs it best with a d x d op.

    ``maps``: N x C x H x W. ``exclude``: channel indices never used as sources (they are still targets).
    Dead (all-zero) channels are never sources. Every pair is fitted at once from shifted Gram products
    (see ``_pair_fits``); "best" = lowest relative error (equivalently lowest SSE, the target being fixed).
    """
    d = _check_d(d)
    ridge = _check_ridge(ridge)
    x = _layer_maps(maps)
    c = x.shape[1]
    excl = _channel_list(exclude, c, "exclude")
    fits = _pair_fits(x, d, ridge)
    rel = fits.rel
    allowed = ~np.eye(c, dtype=bool)
    allowed[fits.dead, :] = False
    allowed[excl, :] = False
    emat = np.where(allowed, rel, np.inf)
    src = np.argmin(emat, axis=0) if c > 0 else np.zeros(0, dtype=int)
    cols = np.arange(c)
    ok = np.isfinite(emat[src, cols]) & ~fits.dead
    source = np.where(ok, src, -1).astype(np.int64)
    kernel = np.where(ok[:, None], fits.theta[src, :, cols], 0.0).reshape(c, d, d)
    bias = np.where(ok, fits.bias[src, cols], fits.mean)
    sse = np.where(ok, fits.sse[src, cols], fits.ss)
    rel_best = np.where(ok, emat[src, cols], _relative(fits.ss, fits.ss, fits.sumsq))
    return BestSources(d=d, source=source, rel_error=rel_best, mse=sse / fits.m, kernel=kernel, bias=bias,
                       dead=fits.dead.copy(), error_matrix=emat)


# ----------------------------------------------------------------------------------------------------------
# ghostability


@dataclass
class Ghostability:
    """Result of :func:`ghostability`: a Ghost-module structure for one layer and its reconstruction error.

    Structure (exactly what ``GhostModule(ratio=ratio, dw_size=d)`` realises, whose output is
    ``cat([primary, cheap])[:, :C]`` with ``m = ceil(C / ratio)`` primary maps and ``m * (ratio - 1)`` cheap
    maps, cheap map ``p * (ratio - 1) + r`` made from primary map ``p``):

    * ``intrinsic`` - the m channels the primary conv keeps, in primary-output order; ``intrinsic[p]`` is
      primary map p. Only the last one may feed fewer than ``ratio - 1`` ghosts (the unused cheap slots
      fall at the end and are cut by the ``[:C]`` slice).
    * ``slots[p]`` - the ghost channels made from ``intrinsic[p]``, in cheap-slot order (``len <= ratio-1``).
    * ``assignment`` - ghost channel -> its intrinsic source channel (the same information as a dict).
    * ``module_order`` - original channel index at each GhostModule output position
      (``intrinsic + [g for s in slots for g in s]``, length C); undo it with ``np.argsort(module_order)``.
    * ``kernel`` (C x d x d), ``bias`` (C,) - per original channel: channel j is predicted as
      ``conv2d(maps[:, source_of(j)], kernel[j], bias[j], padding=d//2)``; an intrinsic channel has the
      identity (centre-delta) kernel and bias 0. :meth:`cheap_weights` packs the ghosts' kernels into the
      ``(m*(ratio-1), 1, d, d)`` depthwise weight layout.
    * ``rel_error`` (C,) - per-channel MSE / variance (0 for intrinsic and dead channels); ``overall_error``
      = sum of squared residuals of all channels / sum of their centred sums of squares.
    * ``dead`` (C,) - all-zero channels.
    """

    ratio: int
    d: int
    intrinsic: list[int]
    slots: list[list[int]]
    assignment: dict[int, int]
    module_order: list[int]
    kernel: np.ndarray
    bias: np.ndarray
    rel_error: np.ndarray
    overall_error: float
    dead: np.ndarray

    def cheap_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Depthwise weight ``(m*(ratio-1), 1, d, d)`` and bias ``(m*(ratio-1),)`` in cheap-slot order
        (unused trailing slots are zero), float32, for initialising a GhostModule's cheap operation."""
        r1 = self.ratio - 1
        m = len(self.intrinsic)
        w = torch.zeros(m * r1, 1, self.d, self.d)
        b = torch.zeros(m * r1)
        for p, ghosts in enumerate(self.slots):
            for r, g in enumerate(ghosts):
                w[p * r1 + r, 0] = torch.as_tensor(self.kernel[g])
                b[p * r1 + r] = float(self.bias[g])
        return w, b

    def predict(self, maps: Any) -> torch.Tensor:
        """Reconstruct all C channels of ``maps`` (N x C x H x W) from the intrinsic ones (float64, CPU)."""
        x = _layer_maps(maps).to(torch.float64).cpu()
        out = x.clone()
        src = torch.as_tensor([self.assignment[g] for g in sorted(self.assignment)], dtype=torch.long)
        ghosts = sorted(self.assignment)
        if ghosts:
            k = torch.as_tensor(self.kernel[ghosts], dtype=torch.float64)[:, None]
            b = torch.as_tensor(self.bias[ghosts], dtype=torch.float64)
            out[:, ghosts] = F.conv2d(x[:, src], k, b, padding=self.d // 2, groups=len(ghosts))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "d": self.d, "intrinsic": list(self.intrinsic),
                "slots": [list(s) for s in self.slots],
                "assignment": {str(g): s for g, s in self.assignment.items()},
                "module_order": list(self.module_order), "kernel": self.kernel.tolist(),
                "bias": _plain(self.bias), "rel_error": _plain(self.rel_error),
                "overall_error": _plain(self.overall_error), "dead": self.dead.tolist()}

    def __str__(self) -> str:
        return (f"Ghostability(ratio={self.ratio}, d={self.d}, C={len(self.module_order)}, "
                f"intrinsic={len(self.intrinsic)}, overall_error={self.overall_error:.4g})")


def _select_intrinsic(e: np.ndarray, ss: np.ndarray, m: int) -> list[int]:
    """Greedy facility location: repeatedly add the channel that most reduces the total error.

    The error of a non-intrinsic channel j is its best SSE over the chosen sources (initially ``ss_j``, the
    bias-only fit); choosing c makes c exact and lowers every j to ``min(cost_j, e[c, j])``. This objective
    is monotone submodular, so greedy is within (1 - 1/e) of the best uncapacitated choice; capacities are
    handled afterwards by the assignment. Ties go to the lowest index.
    """
    c = len(ss)
    cost = ss.astype(np.float64).copy()
    chosen: list[int] = []
    free = np.ones(c, dtype=bool)
    for _ in range(m):
        red = np.clip(cost[None, :] - e, 0.0, None)  # e has a zero diagonal: red[c, c] = cost[c]
        red[:, ~free] = 0.0
        gain = red.sum(1)
        gain[~free] = -np.inf
        k = int(np.argmax(gain))
        chosen.append(k)
        free[k] = False
        cost = np.minimum(cost, e[k])
        cost[k] = 0.0
    return chosen


def _assign(e: np.ndarray, intrinsic: list[int], ghosts: list[int], ratio: int) -> list[list[int]]:
    """Minimum-total-SSE assignment of ghosts to intrinsic channels, each feeding <= ratio - 1 ghosts and
    only one feeding fewer than ratio - 1 (so the unused cheap slots can sit at the end of the module).

    Exact for given capacities (Hungarian algorithm on intrinsic channels replicated ratio - 1 times). The
    one short intrinsic channel is the least-loaded one of the unconstrained-capacity optimum.
    Returns ``slots`` aligned with ``intrinsic`` (the short one moved last by the caller).
    """
    from scipy.optimize import linear_sum_assignment

    r1 = ratio - 1
    m = len(intrinsic)
    spare = m * r1 - len(ghosts)
    cost = e[np.ix_(intrinsic, ghosts)].T  # (G, m)

    def solve(caps: list[int]) -> list[list[int]]:
        cols = [p for p in range(m) for _ in range(caps[p])]
        if not ghosts:
            return [[] for _ in range(m)]
        rows, picked = linear_sum_assignment(cost[:, cols])
        slots: list[list[int]] = [[] for _ in range(m)]
        for r, col in zip(rows, picked, strict=True):
            slots[cols[col]].append(ghosts[r])
        return [sorted(s) for s in slots]

    slots = solve([r1] * m)
    short = [p for p in range(m) if len(slots[p]) < r1]
    if len(short) > 1:
        p_short = min(short, key=lambda p: (len(slots[p]), p))
        caps = [r1] * m
        caps[p_short] = r1 - spare
        slots = solve(caps)
    return slots


def _ghostability_from_fits(fits: _PairFits, ratio: int) -> Ghostability:
    d = fits.d
    c = len(fits.ss)
    m = math.ceil(c / ratio)
    e = fits.sse
    intrinsic = sorted(_select_intrinsic(e, fits.ss, m))
    chosen = set(intrinsic)
    ghosts = [j for j in range(c) if j not in chosen]
    slots = _assign(e, intrinsic, ghosts, ratio)
    # put the (at most one) short intrinsic channel last, keep the rest in ascending channel order
    order = sorted(range(m), key=lambda p: (len(slots[p]) < ratio - 1, intrinsic[p]))
    intrinsic = [intrinsic[p] for p in order]
    slots = [slots[p] for p in order]
    assignment = {g: intrinsic[p] for p, s in enumerate(slots) for g in s}
    q = d * d
    kernel = np.zeros((c, q))
    bias = np.zeros(c)
    kernel[intrinsic, q // 2] = 1.0
    sse = np.zeros(c)
    for g, s in assignment.items():
        kernel[g] = fits.theta[s, :, g]
        bias[g] = fits.bias[s, g]
        sse[g] = fits.sse[s, g]
    rel = _relative(sse, fits.ss, fits.sumsq)
    total_ss = float(fits.ss.sum())
    total_sse = float(sse.sum())
    overall = float(_relative(np.array(total_sse), np.array(total_ss), np.array(float(fits.sumsq.sum()))))
    module_order = intrinsic + [g for s in slots for g in s]
    return Ghostability(ratio=ratio, d=d, intrinsic=intrinsic, slots=slots, assignment=assignment,
                        module_order=module_order, kernel=kernel.reshape(c, d, d), bias=bias, rel_error=rel,
                        overall_error=overall, dead=fits.dead.copy())


def ghostability(maps: Any, ratio: int = 2, d: int = 3, ridge: float = DEFAULT_RIDGE) -> Ghostability:
    """How well a Ghost module with this ``ratio`` and d x d cheap ops could reproduce a layer's maps.

    ``maps``: N x C x H x W. Steps: (1) fit all C x C cheap ops at once (``best_sources``' machinery);
    (2) choose ``m = ceil(C / ratio)`` intrinsic channels greedily (facility location on the SSE matrix:
    each step adds the channel that most reduces the summed error of all channels, so one representative
    per ghost group is picked first; dead channels never help and are picked only to fill up); (3) assign
    every other channel to one intrinsic source, at most ``ratio - 1`` per source, minimising the summed
    SSE exactly (Hungarian); (4) report per-channel and overall relative error
    ``sum_j SSE_j / sum_j sum (x_j - mean x_j)^2`` (intrinsic channels count as exact). The cheap ops are
    linear (conv + bias, i.e. conv + BN); a ReLU after the cheap op is not modelled.
    """
    ratio = _check_ratio(ratio)
    d = _check_d(d)
    ridge = _check_ridge(ridge)
    return _ghostability_from_fits(_pair_fits(_layer_maps(maps), d, ridge), ratio)


@dataclass
class RatioSuggestion:
    """Result of :func:`suggest_ratio`. ``ratio``: the largest tried ratio with ``errors[ratio] <=
    max_error`` (None if even the smallest exceeds it: keep the plain conv). ``errors``: overall relative
    error per tried ratio. ``ghostability``: the full result for the chosen ratio (None if none)."""

    ratio: int | None
    errors: dict[int, float]
    max_error: float
    d: int
    ghostability: Ghostability | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "errors": {str(k): _plain(v) for k, v in self.errors.items()},
                "max_error": self.max_error, "d": self.d,
                "ghostability": self.ghostability.to_dict() if self.ghostability is not None else None}


def suggest_ratio(maps: Any, max_error: float = 0.1, ratios: Sequence[int] = (2, 3, 4, 5, 6, 8), d: int = 3,
                  ridge: float = DEFAULT_RIDGE) -> RatioSuggestion:
    """Largest Ghost ratio whose :func:`ghostability` overall error is within ``max_error``.

    The C x C fits are computed once and reused for every ratio.
    """
    if isinstance(max_error, bool) or not isinstance(max_error, (int, float)) or not max_error >= 0:
        raise GhostmapsError(f"max_error must be a number >= 0 (a relative error budget, e.g. 0.1); got {max_error!r}")
    if isinstance(ratios, (int, np.integer)) or len(ratios) == 0:
        raise GhostmapsError(f"ratios must be a non-empty sequence of ints >= 2, e.g. (2, 3, 4); got {ratios!r}")
    rs = sorted({_check_ratio(r, "each of ratios") for r in ratios})
    d = _check_d(d)
    ridge = _check_ridge(ridge)
    fits = _pair_fits(_layer_maps(maps), d, ridge)
    results = {r: _ghostability_from_fits(fits, r) for r in rs}
    errors = {r: g.overall_error for r, g in results.items()}
    ok = [r for r in rs if errors[r] <= max_error]
    best = max(ok) if ok else None
    return RatioSuggestion(ratio=best, errors=errors, max_error=float(max_error), d=d,
                           ghostability=results[best] if best is not None else None)


# ----------------------------------------------------------------------------------------------------------
# Table 1


def _pair_list(pairs: Any, c: int) -> list[tuple[int, int]]:
    """Duck-typed pairs: (i, j) tuples, objects with ``.i``/``.j``, dicts with 'i'/'j', or a ``.pairs`` holder."""
    if hasattr(pairs, "pairs") and not isinstance(pairs, (list, tuple)):
        pairs = pairs.pairs
    out = []
    for p in pairs:
        if hasattr(p, "i") and hasattr(p, "j"):
            i, j = p.i, p.j
        elif isinstance(p, dict) and "i" in p and "j" in p:
            i, j = p["i"], p["j"]
        else:
            try:
                i, j = p
            except (TypeError, ValueError):
                raise GhostmapsError(f"pairs must hold (i, j) channel index pairs (or objects with .i and .j); "
                                 f"got {p!r}") from None
        for v in (i, j):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < c:
                raise GhostmapsError(f"pairs: channel index {v!r} in {p!r} is not an int in [0, {c}); "
                                 f"the maps have {c} channels")
        if i == j:
            raise GhostmapsError(f"pairs: ({i}, {j}) maps a channel to itself; pick two different channels")
        out.append((int(i), int(j)))
    return out


@dataclass
class ReconstructionTable:
    """Result of :func:`reconstruction_table`. ``rows``: one dict per (pair, d) with keys ``kind``
    ('pair' or 'random'), ``src``, ``dst``, ``d``, ``mse``, ``rel_error``, ``r2``, ``n`` (number of pairs
    averaged: 1 for a pair row, ``n_random`` for the random baseline, whose src/dst are None)."""

    rows: list[dict[str, Any]]
    ds: tuple[int, ...]
    n_random: int
    seed: int

    _COLS = ("kind", "src", "dst", "d", "mse", "rel_error", "r2", "n")

    def to_dict(self) -> dict[str, Any]:
        return {"ds": list(self.ds), "n_random": self.n_random, "seed": self.seed,
                "rows": [{k: _plain(v) for k, v in r.items()} for r in self.rows]}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_frame(self) -> Any:
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("ReconstructionTable.to_frame() needs pandas (pip install pandas); "
                              "use .to_csv(path) or .rows instead") from None
        return pd.DataFrame(self.rows, columns=list(self._COLS))

    def to_csv(self, path: str | Path) -> Path:
        """Write the rows as CSV (atomically, no pandas needed); returns the path."""
        buf = io.StringIO()
        wr = csv.DictWriter(buf, fieldnames=list(self._COLS), lineterminator="\n")
        wr.writeheader()
        for r in self.rows:
            wr.writerow({k: ("" if r[k] is None else r[k]) for k in self._COLS})
        return atomic_write(path, buf.getvalue())

    def __str__(self) -> str:
        keys: list[tuple[str, Any, Any]] = []
        cell: dict[tuple[Any, ...], dict[str, Any]] = {}
        for r in self.rows:
            key = (r["kind"], r["src"], r["dst"])
            if key not in keys:
                keys.append(key)
            cell[key + (r["d"],)] = r
        head = ["pair".ljust(16)] + [f"d={d}: MSE (rel)".rjust(22) for d in self.ds]
        lines = [" ".join(head)]
        for key in keys:
            name = f"{key[1]} -> {key[2]}" if key[0] == "pair" else f"random (n={self.n_random})"
            vals = []
            for d in self.ds:
                r = cell.get(key + (d,))
                vals.append((f"{r['mse']:.4g} ({r['rel_error']:.3f})" if r else "-").rjust(22))
            lines.append(" ".join([name.ljust(16)] + vals))
        return "\n".join(lines)


def reconstruction_table(maps: Any, pairs: Any, ds: Sequence[int] = (1, 3, 5, 7), n_random: int = 64,
                         seed: int = 0, ridge: float = DEFAULT_RIDGE) -> ReconstructionTable:
    """GhostNet Table 1 protocol: for each chosen pair (i -> j) and each d, fit the d x d op making map j
    from map i over all images of ``maps`` (N x C x H x W) and report its MSE and relative error.

    A baseline row per d averages the same fit over ``n_random`` random ordered pairs of different channels
    (drawn with ``seed``, from the non-dead channels when at least two exist), so "ghost pair" errors can be
    read against what any two channels of the layer give.
    """
    x = _layer_maps(maps)
    c = x.shape[1]
    plist = _pair_list(pairs, c)
    if isinstance(ds, (int, np.integer)):
        ds = (ds,)
    ds_t = tuple(_check_d(v, "each of ds") for v in ds)
    if not ds_t:
        raise GhostmapsError("ds must list at least one odd kernel size, e.g. (1, 3, 5, 7)")
    if isinstance(n_random, bool) or not isinstance(n_random, (int, np.integer)) or n_random < 0:
        raise GhostmapsError(f"n_random must be an int >= 0 (number of random baseline pairs); got {n_random!r}")
    ridge = _check_ridge(ridge)
    rng = np.random.default_rng(seed)
    live = np.flatnonzero(x.abs().amax(dim=(0, 2, 3)).cpu().numpy() > 0)
    pool = live if len(live) >= 2 else np.arange(c)
    rand: list[tuple[int, int]] = []
    if len(pool) >= 2:
        for _ in range(int(n_random)):
            i, j = rng.choice(pool, size=2, replace=False)
            rand.append((int(i), int(j)))
    all_pairs = plist + rand
    rows: list[dict[str, Any]] = []
    for d in ds_t:
        if not all_pairs:
            continue
        si = torch.as_tensor([p[0] for p in all_pairs], device=x.device)
        dj = torch.as_tensor([p[1] for p in all_pairs], device=x.device)
        fit = fit_cheap_op(x[:, si].transpose(0, 1), x[:, dj].transpose(0, 1), d=d, ridge=ridge)
        for k, (i, j) in enumerate(plist):
            rows.append({"kind": "pair", "src": i, "dst": j, "d": d, "mse": float(fit.mse[k]),
                         "rel_error": float(fit.rel_error[k]), "r2": float(fit.r2[k]), "n": 1})
        if rand:
            sl = slice(len(plist), None)
            rows.append({"kind": "random", "src": None, "dst": None, "d": d, "mse": float(fit.mse[sl].mean()),
                         "rel_error": float(fit.rel_error[sl].mean()), "r2": float(fit.r2[sl].mean()),
                         "n": len(rand)})
    return ReconstructionTable(rows=rows, ds=ds_t, n_random=len(rand), seed=seed)
