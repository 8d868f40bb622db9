"""Reconstructability: how well channel j can be made from channel i by the best d x d cheap op, held out.

``R2[i, j] = 1 - SSE_ij / SS_j`` where the op is fitted on one part of the images and ``SSE_ij`` and the
centred sum of squares ``SS_j`` are measured on the other (all C x C pairs from shifted Gram products of both
parts, no convolution per pair). Unlike a correlation this is what a Ghost module needs: it credits a ghost
that is a blurred, shifted or negated copy, and it does not reward an op that only fits the images it saw
(held-out R2 is below 0 when the op does worse than the channel's mean).

As a :class:`~analysis.measure.similarity.ChannelSimilarity` (``metric="r2"``) the matrix is symmetric, the
better direction of each pair, ``max(R2[i, j], R2[j, i])``, clipped to [0, 1] (``ghost_groups`` reads |s|, so
a negative held-out R2 must not look similar); ``ghost_pairs`` and ``ghost_groups`` work on it unchanged.
The directed matrix is :func:`heldout_r2`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from analysis._core.validation import check_odd_size
from analysis.measure.similarity import ChannelSimilarity
from analysis.reconstruct.heldout import DEFAULT_SPLIT, Split, split_maps
from analysis.reconstruct.lstsq import (
    DEFAULT_RIDGE,
    _check_ridge,
    _fits_from_moments,
    _pair_moments,
    _pair_sse_on,
)

__all__ = ["heldout_r2", "reconstructability"]


def _r2(maps: Any, d: int, heldout: Any, split: float | None, seed: int, groups: Sequence[Any] | None,
        ridge: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, Split]:
    fit_x, eval_x, sp = split_maps(maps, heldout, split, seed, groups)
    fits = _fits_from_moments(_pair_moments(fit_x, d), ridge)
    mo = _pair_moments(eval_x, d)
    sse, ss, _ = _pair_sse_on(fits, mo)
    # a channel with no variance on either part has no meaningful R2 (dead or constant)
    flat = (ss <= 1e-12 * np.maximum(mo.syy.cpu().numpy(), 1e-300)) | (fits.ss <= 1e-12 * np.maximum(fits.sumsq,
                                                                                                   1e-300))
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = 1.0 - sse / np.where(flat, 1.0, ss)[None, :]
    r2[:, flat] = 0.0
    r2[flat, :] = 0.0
    np.fill_diagonal(r2, 1.0)
    dead = fits.dead | mo.dead
    return r2, dead, flat & ~dead, sp


def heldout_r2(maps: Any, d: int = 3, *, heldout: Any = None, split: float | None = DEFAULT_SPLIT, seed: int = 0,
               groups: Sequence[Any] | None = None, ridge: float = DEFAULT_RIDGE) -> tuple[np.ndarray, Split]:
    """The directed C x C held-out R2 (``[i, j]``: channel j made from channel i) and the split it used;
    dead and constant channels get 0 off the diagonal. Arguments as :func:`reconstructability`."""
    r2, _, _, sp = _r2(maps, check_odd_size(d), heldout, split, seed, groups, _check_ridge(ridge))
    return r2, sp


def reconstructability(maps: Any, d: int = 3, *, heldout: Any = None, split: float | None = DEFAULT_SPLIT,
                       seed: int = 0, groups: Sequence[Any] | None = None, ridge: float = DEFAULT_RIDGE,
                       layer: str | None = None) -> ChannelSimilarity:
    """Held-out reconstructability of every channel pair as a ``ChannelSimilarity`` with ``metric="r2"``.

    Args:
        maps: N x C x H x W maps of one layer.
        d: cheap-op kernel size (odd).
        heldout: maps of other images to measure on; else ``split`` of the images (of the photos, with
            ``groups``) is held out with ``seed``. ``split=None`` measures in-sample (optimistic).
        groups: the photo of each image, so views of one photo stay on one side.
        layer: a name to carry along.

    Returns:
        ``ChannelSimilarity`` (symmetric: the better direction, clipped to [0, 1]; dead and constant channels
        masked) for ``ghost_pairs`` / ``ghost_groups``.
    """
    r2, dead, constant, _ = _r2(maps, check_odd_size(d), heldout, split, seed, groups, _check_ridge(ridge))
    sym = np.clip(np.maximum(r2, r2.T), 0.0, 1.0)
    return ChannelSimilarity(matrix=torch.as_tensor(sym, dtype=torch.float64), metric="r2",
                             dead=torch.as_tensor(dead), constant=torch.as_tensor(constant), layer=layer)
