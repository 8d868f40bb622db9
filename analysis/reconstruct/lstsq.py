"""The least-squares kernel under every cheap-op fit: input checks, the d^2 shifted copies of a map and
the ridge-regularised normal equations, in float64 (see :mod:`analysis.reconstruct` for the model)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from analysis._core.errors import GhostmapsError
from analysis._core.numerics import relative_from_sums

#: Default ridge, relative to the mean variance of the shifted source copies. Small enough that exact
#: (noiseless) relations are recovered to ~1e-7, large enough that rank-deficient sources stay solvable.
DEFAULT_RIDGE = 1e-8
#: Memory budget (bytes) for one block of float64 shifted copies.
_CHUNK_BYTES = 64 * 2**20



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


def _check_ridge(ridge: Any) -> float:
    if not isinstance(ridge, (int, float)) or isinstance(ridge, bool) or not math.isfinite(ridge) or ridge < 0:
        raise GhostmapsError(f"ridge must be a finite number >= 0 (relative to the source variance); got {ridge!r}, "
                         f"use the default {DEFAULT_RIDGE}")
    return float(ridge)


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
    """SSE / centred sum of squares: ``analysis._core.numerics.relative_from_sums`` with the reconstruction's
    rule for an inexact fit of a constant target (a finite floor, see the module doc)."""
    return relative_from_sums(sse, ss, sumsq, constant_target="floor")


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


