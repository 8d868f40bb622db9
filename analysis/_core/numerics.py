"""Numerical helpers shared across analysis (one definition each).

**Relative error.** The error of a prediction ŷ of a target y is ``SSE / SS``: the sum of squared errors
Σ (ŷ − y)² over the centred sum of squares of the target, Σ (y − ȳ)² with ȳ the mean of each channel (0 is
exact, 1 is as good as predicting each channel's mean). Everything is in float64. ``relative_error`` computes
it from tensors (convert/verify, ghostify's calibrated error); ``relative_from_sums`` from the sums, for
arrays of fits at once (``analysis.reconstruct``); the first is the second on one pair of tensors.

One edge-case rule, for every caller: with ``tol = REL_TOL · Σ y²`` (the rounding level of float64 sums),

* a target with ``SS ≤ tol`` is *constant* (a dead target is constant);
* a constant target predicted with ``SSE ≤ tol`` is an exact fit: 0;
* a constant target predicted inexactly has no variance to be relative to. Its value is the one point where
  the two callers' documented (and tested) behaviours differ, so it is the ``constant_target`` argument:
  ``"inf"`` (``relative_error``, verify: an honest "not explained at all") or ``"floor"``
  (``analysis.reconstruct``: ``SSE / max(tol, tiny)``, large but finite, so inexact fits still rank).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

__all__ = ["REL_TOL", "relative_error", "relative_from_sums"]

#: A sum of squares at most this fraction of the target's Σ y² counts as zero (float64 rounding level).
REL_TOL = 1e-12

ConstantTarget = Literal["inf", "floor"]


def relative_from_sums(sse: np.ndarray | float, ss: np.ndarray | float, sumsq: np.ndarray | float, *,
                       constant_target: ConstantTarget = "inf") -> np.ndarray:
    """``SSE / SS`` element by element (arrays broadcast), in float64, with the edge-case rule of the module
    docstring; ``sumsq`` is the target's uncentred Σ y². Never NaN."""
    sse, ss, sumsq = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (sse, ss, sumsq)))
    tol = REL_TOL * sumsq
    const = ss <= tol
    if constant_target == "floor":
        floor = np.maximum(tol, np.finfo(np.float64).tiny)
    elif constant_target == "inf":
        floor = np.zeros_like(tol)
    else:
        raise ValueError(f"constant_target must be 'inf' or 'floor', got {constant_target!r}")
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rel = sse / np.where(const, floor, ss)
    return np.where(const & (sse <= tol), 0.0, rel)  # "inf": an inexact constant fit is SSE / 0 = inf


def relative_error(pred: torch.Tensor, target: torch.Tensor, *,
                   constant_target: ConstantTarget = "inf") -> float:
    """Relative error of ``pred`` against ``target`` (module docstring): sum of squared errors / centred sum
    of squares of the target (means per channel, dim 1, over the other dims; per column for 2-D), in float64.
    0 is exact, 1 is as good as predicting each channel's mean; a constant target gives 0 (exact) or inf."""
    t = target.double()
    sse = float(((pred.double() - t) ** 2).sum())
    dims = (0, *range(2, t.dim())) if t.dim() > 2 else (0,)
    ss = float(((t - t.mean(dim=dims, keepdim=True)) ** 2).sum())
    return float(relative_from_sums(sse, ss, float((t ** 2).sum()), constant_target=constant_target))
