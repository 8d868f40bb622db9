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
large but finite number (``analysis._core.numerics.relative_from_sums``, the one definition of the relative
error, with ``constant_target="floor"``). Nothing returned is ever NaN.

All functions take torch tensors or numpy arrays on any device, compute there (float64; MPS falls back to
CPU, which lacks float64 there) and return plain CPU data (numpy arrays, Python numbers).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from analysis._core.errors import GhostmapsError
from analysis._core.results import Result, floats, number, plain
from analysis._core.validation import check_odd_size
from analysis.reconstruct.lstsq import (
    _CHUNK_BYTES,
    DEFAULT_RIDGE,
    _as_tensor,
    _check_ridge,
    _layer_maps,
    _pair_fits,
    _relative,
    _shifted,
    _solve,
)

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["BestSources", "CheapOpFit", "CheapOpFits", "best_sources", "fit_cheap_op"]


# ----------------------------------------------------------------------------------------------------------
# fit_cheap_op


def _taps(kernel: np.ndarray) -> dict[str, float]:
    """A d x d kernel as table columns ``k{u}_{v}`` (row u, column v of the cross-correlation)."""
    d = kernel.shape[-1]
    return {f"k{u}_{v}": float(kernel[u, v]) for u in range(d) for v in range(d)}


@dataclass(eq=False)
class CheapOpFit(Result):
    """Result of :func:`fit_cheap_op` for one pair of maps (N x H x W each).

    ``kernel`` (d x d) and ``bias`` reproduce the prediction as
    ``F.conv2d(src[:, None], kernel[None, None], bias, padding=d // 2)`` (cross-correlation, zero padding).
    ``mse`` = mean squared residual, ``rel_error`` = MSE / variance of dst (0 for an exactly fitted constant
    dst), ``r2`` = 1 - rel_error. ``rows()``: one row (the numbers and the kernel taps ``k{u}_{v}``); equality
    compares ``to_dict()``.
    """

    kernel: np.ndarray
    bias: float
    mse: float
    rel_error: float
    r2: float
    d: int

    batched: ClassVar[bool] = False
    _COLUMNS = ("d", "bias", "mse", "rel_error", "r2")

    def predict(self, src: Any) -> torch.Tensor:
        """Apply the fitted op to ``src`` (N x H x W or H x W, as in the fit) and return the prediction (float64)."""
        s = _as_tensor(src, "src").to(torch.float64)
        k = torch.as_tensor(np.asarray(self.kernel), dtype=torch.float64, device=s.device)
        b = torch.as_tensor([self.bias], dtype=torch.float64, device=s.device)
        shape = s.shape
        out = F.conv2d(s.reshape(-1, 1, *shape[-2:]), k[None, None], b, padding=self.d // 2)
        return out.reshape(shape)

    def rows(self) -> list[dict[str, Any]]:
        return [plain({"d": self.d, "bias": self.bias, "mse": self.mse, "rel_error": self.rel_error, "r2": self.r2,
                       **_taps(self.kernel)})]

    def to_dict(self) -> dict[str, Any]:
        return {"d": self.d, "batched": False, "kernel": plain(self.kernel), "bias": plain(self.bias),
                "mse": plain(self.mse), "rel_error": plain(self.rel_error), "r2": plain(self.r2)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        d = int(data["d"])
        return cls(floats(data["kernel"]).reshape(d, d), number(data["bias"]), number(data["mse"]),
                   number(data["rel_error"]), number(data["r2"]), d)


@dataclass(eq=False)
class CheapOpFits(Result):
    """Result of :func:`fit_cheap_op` for P pairs at once (P x N x H x W each): the fields of
    :class:`CheapOpFit` as arrays, ``kernel`` P x d x d and ``bias``, ``mse``, ``rel_error``, ``r2`` of length P.
    ``fits[k]`` is pair k's :class:`CheapOpFit`; ``rows()``: one per pair. Equality compares ``to_dict()``."""

    kernel: np.ndarray
    bias: np.ndarray
    mse: np.ndarray
    rel_error: np.ndarray
    r2: np.ndarray
    d: int

    batched: ClassVar[bool] = True
    _COLUMNS = ("pair", *CheapOpFit._COLUMNS)

    def __len__(self) -> int:
        return len(self.mse)

    def __getitem__(self, k: int) -> CheapOpFit:
        return CheapOpFit(self.kernel[k], float(self.bias[k]), float(self.mse[k]), float(self.rel_error[k]),
                          float(self.r2[k]), self.d)

    def predict(self, src: Any) -> torch.Tensor:
        """Apply pair k's op to ``src[k]`` (P x N x H x W, as in the fit) for every k; the prediction is float64."""
        s = _as_tensor(src, "src").to(torch.float64)
        k = torch.as_tensor(np.asarray(self.kernel), dtype=torch.float64, device=s.device)
        b = torch.as_tensor(np.asarray(self.bias), dtype=torch.float64, device=s.device).reshape(-1)
        p = s.shape[0]
        out = F.conv2d(s.permute(1, 0, 2, 3), k[:, None], b, padding=self.d // 2, groups=p)
        return out.permute(1, 0, 2, 3)

    def rows(self) -> list[dict[str, Any]]:
        return [{"pair": k, **self[k].rows()[0]} for k in range(len(self))]

    def to_dict(self) -> dict[str, Any]:
        return {"d": self.d, "batched": True, "kernel": plain(self.kernel), "bias": plain(self.bias),
                "mse": plain(self.mse), "rel_error": plain(self.rel_error), "r2": plain(self.r2)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        d = int(data["d"])
        return cls(floats(data["kernel"]).reshape(-1, d, d), floats(data["bias"]), floats(data["mse"]),
                   floats(data["rel_error"]), floats(data["r2"]), d)


def fit_cheap_op(src: Any, dst: Any, d: int = 3, bias: bool = True, ridge: float = DEFAULT_RIDGE
                 ) -> CheapOpFit | CheapOpFits:
    """Best d x d depthwise filter (plus bias) making ``dst`` from ``src``, by closed-form least squares.

    ``src`` and ``dst`` are N x H x W (one pair over N images; H x W is taken as N = 1): a :class:`CheapOpFit`;
    or P x N x H x W (P pairs fitted at once, batched normal equations): a :class:`CheapOpFits`. The fit minimises
    ``sum (dst - conv2d(src, K, b, padding=d//2))^2`` over all N*H*W positions; see the module docstring
    for the formulas and the ridge. Vectorised: memory is bounded by chunking the P pairs.
    """
    d = check_odd_size(d)
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
    fits = CheapOpFits(kernel, bvec, mse, rel, 1.0 - rel, d)
    return fits if batched else fits[0]


# ----------------------------------------------------------------------------------------------------------
# best_sources


@dataclass(eq=False)
class BestSources(Result):
    """Result of :func:`best_sources`: the best single-channel source of every channel.

    ``source[j]`` is the channel i != j whose fitted d x d op reconstructs channel j best (-1: none usable,
    i.e. ``dead[j]`` or no allowed non-dead source; then ``kernel`` is 0, ``bias`` the channel mean and
    ``rel_error`` 1, or 0 for a dead/constant channel). ``kernel[j]`` (d x d) and ``bias[j]`` make channel j
    as ``conv2d(maps[:, source[j]], kernel[j], bias[j], padding=d//2)``. ``rel_error[j]`` = MSE / variance
    of channel j, ``mse[j]`` the MSE. ``dead[j]``: channel j is all zero (trivially reconstructed, never a
    source). ``error_matrix[i, j]``: relative error of making j from i; inf where i is not allowed
    (i == j, dead or excluded). ``rows()``: one per channel j (its source, errors, bias, dead; the kernels and the
    error matrix are in ``to_dict``, where the matrix's inf is None and ``from_dict`` reads it back as inf).
    Equality compares ``to_dict()``.
    """

    d: int
    source: np.ndarray
    rel_error: np.ndarray
    mse: np.ndarray
    kernel: np.ndarray
    bias: np.ndarray
    dead: np.ndarray
    error_matrix: np.ndarray

    _COLUMNS = ("channel", "source", "rel_error", "mse", "bias", "dead")

    def rows(self) -> list[dict[str, Any]]:
        return [plain({"channel": j, "source": self.source[j], "rel_error": self.rel_error[j], "mse": self.mse[j],
                       "bias": self.bias[j], "dead": self.dead[j]}) for j in range(len(self.source))]

    def to_dict(self) -> dict[str, Any]:
        return {"d": self.d, "source": plain(self.source), "rel_error": plain(self.rel_error),
                "mse": plain(self.mse), "kernel": plain(self.kernel), "bias": plain(self.bias),
                "dead": plain(self.dead), "error_matrix": plain(self.error_matrix)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        d, c = int(data["d"]), len(data["source"])
        return cls(d, np.asarray(data["source"], dtype=np.int64), floats(data["rel_error"]), floats(data["mse"]),
                   floats(data["kernel"]).reshape(c, d, d), floats(data["bias"]),
                   np.asarray(data["dead"], dtype=bool), floats(data["error_matrix"], math.inf).reshape(c, c))

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
    d = check_odd_size(d)
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


