"""Numerical helpers shared across analysis (one definition each)."""

from __future__ import annotations

import math

import torch

__all__ = ["relative_error"]


def relative_error(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Relative error of ``pred`` against ``target``: sum of squared errors / centred sum of squares of the
    target (means per channel, dim 1, over the other dims; per column for 2-D), in float64. 0 is exact, 1 is
    as good as predicting each channel's mean; a constant target gives 0 (exact) or inf."""
    t = target.double()
    sse = float(((pred.double() - t) ** 2).sum())
    dims = (0, *range(2, t.dim())) if t.dim() > 2 else (0,)
    ss = float(((t - t.mean(dim=dims, keepdim=True)) ** 2).sum())
    if ss > 0:
        return sse / ss
    return 0.0 if sse == 0 else math.inf
