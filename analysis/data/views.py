"""Seeded random views of photos: random resized crops and horizontal flips, many distinct views per photo.

A view is fixed by ``(seed, photo name, view index)`` alone, so view 17 of ``china`` under seed 0 is the same
crop wherever it is asked for (in any set, in any order, in any process), and different seeds or indices give
different crops. Crops follow the usual random-resized-crop recipe: an area fraction drawn uniformly from
``scale`` and a log-uniform aspect ratio from ``ratio``, placed uniformly inside the photo (ten tries, then the
largest centred crop of an allowed aspect). The model's preprocessing (resize, centre crop, normalise) is
applied after the crop, so a view has the model's input size.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from analysis._core.errors import GhostmapsError

__all__ = ["ViewSpec", "crop_box", "make_view"]


@dataclass(frozen=True)
class ViewSpec:
    """How views are drawn: ``n`` views in all, spread over the photos in turn, under ``seed``."""

    n: int
    seed: int = 0
    scale: tuple[float, float] = (0.25, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise GhostmapsError(f"views must be a positive number of views, got {self.n!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise GhostmapsError(f"seed must be a non-negative integer, got {self.seed!r}.")
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise GhostmapsError(f"scale must be (low, high) with 0 < low <= high <= 1, got {self.scale!r}.")
        rlo, rhi = self.ratio
        if not 0 < rlo <= rhi:
            raise GhostmapsError(f"ratio must be (low, high) with 0 < low <= high, got {self.ratio!r}.")


def _rng(seed: int, name: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode()), index])


def crop_box(width: int, height: int, spec: ViewSpec, name: str, index: int) -> tuple[tuple[int, int, int, int], bool]:
    """The crop ``(left, top, right, bottom)`` and flip of view ``index`` of photo ``name`` (width × height)."""
    rng = _rng(spec.seed, name, index)
    area = width * height
    log_lo, log_hi = math.log(spec.ratio[0]), math.log(spec.ratio[1])
    flip = bool(spec.flip and rng.random() < 0.5)
    for _ in range(10):
        target = area * rng.uniform(spec.scale[0], spec.scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return (left, top, left + w, top + h), flip
    aspect = min(max(width / height, spec.ratio[0]), spec.ratio[1])
    w, h = (width, int(round(width / aspect))) if width / height < aspect else (int(round(height * aspect)), height)
    w, h = min(w, width), min(h, height)
    left, top = (width - w) // 2, (height - h) // 2
    return (left, top, left + w, top + h), flip


def make_view(img: Image.Image, spec: ViewSpec, name: str, index: int) -> Image.Image:
    """View ``index`` of photo ``name``: its seeded crop, flipped left-right when drawn so."""
    box, flip = crop_box(img.width, img.height, spec, name, index)
    out = img.crop(box)
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else out
