"""GhostNet's Figure 1: a layer's feature maps as tiles, with ghost pairs framed in matching colours."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from analysis._core.errors import GhostmapsError
from analysis.measure.pairs import GhostPair
from analysis.plots._common import pair_colour


def _normalise(tile: np.ndarray) -> np.ndarray:
    lo, hi = float(tile.min()), float(tile.max())
    return (tile - lo) / (hi - lo) if hi > lo else np.zeros_like(tile)


def figure1(
    maps: torch.Tensor,
    pairs: Iterable[GhostPair] = (),
    *,
    max_channels: int = 64,
    ncols: int | None = None,
    title: str | None = None,
    image: torch.Tensor | np.ndarray | None = None,
    cmap: str = "gray",
    tile_inches: float = 0.75,
) -> Figure:
    """Draw one image's feature maps as a grid of tiles with the ghost pairs boxed in matching colours.

    Args:
        maps: C×H×W (or 1×C×H×W) maps of one layer for one image.
        pairs: ghost pairs (e.g. ``ghost_pairs(...)``); pair n is framed in colour n (red, green, blue, ...). A
            pair flagged ``sparse`` (a channel zero on most positions) says so in the legend.
        max_channels: show at most this many tiles: the first channels, always including every pair's channels.
        ncols: tiles per row (default: a near-square grid).
        title: figure title.
        image: optionally the input image (H×W×3 in 0..1 or 0..255, or a normalised 3×H×W tensor), shown first.
        cmap: colormap of the tiles; each tile is min-max normalised on its own, as in the paper.
        tile_inches: size of one tile.

    Returns:
        A matplotlib Figure (deterministic: same input, same picture).
    """
    if maps.dim() == 4 and maps.shape[0] == 1:
        maps = maps[0]
    if maps.dim() != 3:
        raise GhostmapsError(f"figure1 needs one image's maps, C×H×W, got shape {tuple(maps.shape)}.")
    pairs = list(pairs)
    c = maps.shape[0]
    for p in pairs:
        if not (0 <= p.i < c and 0 <= p.j < c):
            raise GhostmapsError(f"pair ({p.i}, {p.j}) is outside the layer's {c} channels.")
    n_paired = len({ch for p in pairs for ch in (p.i, p.j)})
    if max_channels < n_paired:
        raise GhostmapsError(f"max_channels={max_channels} cannot show the {n_paired} paired channels.")
    shown = figure1_channels(c, pairs, max_channels)
    n_tiles = len(shown) + (image is not None)
    ncols = ncols or max(1, math.ceil(math.sqrt(n_tiles * 1.6)))
    nrows = math.ceil(n_tiles / ncols)
    legend_rows = 1 if pairs else 0
    fig = Figure(figsize=(ncols * tile_inches, nrows * tile_inches + 0.45 * legend_rows + (0.4 if title else 0)))
    grid = fig.add_gridspec(nrows, ncols, wspace=0.08, hspace=0.08)
    colour_of = {}
    for n, p in enumerate(pairs):
        colour_of.setdefault(p.i, pair_colour(n))
        colour_of.setdefault(p.j, pair_colour(n))
    data = maps.detach().float().cpu().numpy()
    slots = [None] * (image is not None) + shown
    for slot, ch in enumerate(slots):
        ax = fig.add_subplot(grid[slot // ncols, slot % ncols])
        ax.set_xticks([])
        ax.set_yticks([])
        if ch is None:
            ax.imshow(_display_image(image))
            ax.set_title("input", fontsize=6, pad=1.5)
            continue
        ax.imshow(_normalise(data[ch]), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(str(ch), fontsize=5, pad=1.0, color=colour_of.get(ch, "0.35"))
        for spine in ax.spines.values():
            spine.set_visible(False)
        if ch in colour_of:
            ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, lw=2.4,
                                   edgecolor=colour_of[ch], clip_on=False))
    if pairs:
        handles = [Patch(facecolor="none", edgecolor=pair_colour(n), lw=2, label=_label(p))
                   for n, p in enumerate(pairs)]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=7, frameon=False,
                   bbox_to_anchor=(0.5, 0.0))
        fig.subplots_adjust(bottom=0.45 / fig.get_figheight() + 0.02)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def _sparse(p: GhostPair) -> bool:
    return bool(getattr(p, "sparse", False))


def _label(p: GhostPair) -> str:
    return f"{p.i} ~ {p.j}  ({p.score:.3f}{', sparse: APoZ ≥ 0.8' if _sparse(p) else ''})"


def _display_image(image: torch.Tensor | np.ndarray) -> np.ndarray:
    arr = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, float)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.max() > 1.5:
        arr = arr / 255.0
    if arr.min() < 0:  # a normalised tensor: stretch to 0..1 for display
        arr = (arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-12)
    return np.clip(arr.squeeze(), 0, 1)


def figure1_channels(c: int, pairs: Sequence[GhostPair], max_channels: int = 64) -> list[int]:
    """The channel indices ``figure1`` shows for a layer of ``c`` channels (for captions and tests)."""
    paired = sorted({ch for p in pairs for ch in (p.i, p.j)})
    rest = [ch for ch in range(c) if ch not in paired][: max(0, max_channels - len(paired))]
    return sorted(paired + rest)
