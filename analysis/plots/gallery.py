"""The strongest ghost pairs of a layer, side by side over several images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from analysis._core.errors import GhostmapsError
from analysis.plots._common import pair_colour


def scaled_tile(x: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.0)) -> np.ndarray:
    """The tile scaled so its 1st–99th percentiles span [0, 1] (clipped): a few outlier pixels, e.g. a hot border,
    do not wash out the rest as min–max scaling would."""
    lo, hi = (float(v) for v in np.percentile(x, percentiles))
    if hi <= lo:  # (almost) constant below the top percentile: fall back to the full range
        lo, hi = float(x.min()), float(x.max())
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(x, dtype=float)


def pair_gallery(
    survey: Any = None,
    layer: str | None = None,
    *,
    maps: torch.Tensor | None = None,
    pairs: Sequence[Any] | None = None,
    k: int = 4,
    n_images: int = 4,
    image_names: Sequence[str] | None = None,
    tile_inches: float = 0.9,
) -> Figure:
    """For the ``k`` strongest pairs of ``layer``, show channel i and channel j next to each other on each of
    ``n_images`` images (one row per pair, one column pair per image; each tile scaled by its 1st–99th percentiles,
    so that a few outlier pixels do not wash it out). A true ghost pair looks alike on every image, not only on one.

    Args:
        survey: a ``Survey`` giving the pairs of ``layer`` (or pass ``pairs``).
        layer: the layer's name.
        maps: the layer's maps, N×C×H×W (the survey keeps none; ``analysis.pipeline.survey_gallery`` captures
            them from a model and images and calls this).
        pairs: ghost pairs (``GhostPair`` or (i, j) tuples) instead of the survey's.
        k, n_images: pairs (rows) and images shown; image_names: column labels.
    """
    if pairs is None:
        if survey is None or layer is None:
            raise GhostmapsError("pair_gallery needs a survey and a layer, or explicit pairs.")
        pairs = list(survey[layer].pairs)
    chosen = [(int(p.i), int(p.j)) if hasattr(p, "i") else (int(p[0]), int(p[1])) for p in list(pairs)[:k]]
    scores = [getattr(p, "score", None) for p in list(pairs)[:k]]
    sparse = [bool(getattr(p, "sparse", False)) for p in list(pairs)[:k]]
    if not chosen:
        raise GhostmapsError(f"no pairs to show for layer {layer!r}.")
    if maps is None:
        raise GhostmapsError("pair_gallery needs the layer's maps=... (N×C×H×W); analysis.pipeline.survey_gallery "
                             "captures them from a model and images.")
    if maps.dim() != 4:
        raise GhostmapsError(f"pair_gallery needs N×C×H×W maps, got shape {tuple(maps.shape)}.")
    maps = maps[:n_images].detach().float().cpu()
    n, c = maps.shape[:2]
    for i, j in chosen:
        if not (0 <= i < c and 0 <= j < c):
            raise GhostmapsError(f"pair ({i}, {j}) is outside the layer's {c} channels.")
    names = list(image_names or [f"image {t}" for t in range(n)])[:n]
    if len(names) < n:
        raise GhostmapsError(f"image_names has {len(names)} names for the {n} images shown: pass one per image "
                             f"(or n_images={len(names)}).")
    fig = Figure(figsize=(tile_inches * 2 * n + 0.6 * (n - 1) + 1.2, tile_inches * len(chosen) + 1.0))
    axes = fig.subplots(len(chosen), 2 * n, squeeze=False)
    for row, (i, j) in enumerate(chosen):
        for t in range(n):
            for side, ch in enumerate((i, j)):
                ax = axes[row, 2 * t + side]
                ax.imshow(scaled_tile(maps[t, ch].numpy()), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                h, w = maps.shape[2:]
                ax.add_patch(Rectangle((-0.5, -0.5), w, h, fill=False, edgecolor=pair_colour(row), linewidth=2))
                if row == 0:
                    ax.set_title(f"{names[t]}\nch {ch}" if side == 0 else f"\nch {ch}", fontsize=7)
                else:
                    ax.set_title(f"ch {ch}", fontsize=7)
        score = scores[row]
        axes[row, 0].set_ylabel(f"{i}~{j}" + (f"\n{score:.3f}" if score is not None else "")
                                + ("\nsparse" if sparse[row] else ""), fontsize=7)
    fig.suptitle(f"strongest ghost pairs of {layer or 'the layer'} over {n} images", fontsize=9)
    fig.tight_layout()
    return fig
