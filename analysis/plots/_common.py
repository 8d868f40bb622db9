"""Shared plotting helpers: pair colours and saving. Figures are built as ``matplotlib.figure.Figure``
objects (no pyplot, no backend chosen at import), so they render headless and in notebooks alike."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.figure import Figure

from analysis._core.io import atomic_path

# Red, green, blue first (as in GhostNet's Figure 1), then other colours that stand out on gray tiles.
PAIR_COLOURS = ("#e41a1c", "#4daf4a", "#377eb8", "#ff7f00", "#984ea3", "#ffd92f", "#f781bf", "#a65628",
                "#00ced1", "#7fff00")


def pair_colour(index: int) -> str:
    """The colour of the ``index``-th pair (cycles after ten)."""
    return PAIR_COLOURS[index % len(PAIR_COLOURS)]


def save_figure(fig: Figure, path: str | os.PathLike, svg: bool = False, dpi: int = 150) -> list[Path]:
    """Save ``fig`` as PNG at ``path`` (and an SVG beside it when ``svg``), atomically: the file appears
    complete or not at all. Returns the written paths."""
    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        path = path.with_name(path.name + ".png")  # appended: "fig_features.3.conv.0" keeps its ".0"
    targets = [path] + ([path.with_suffix(".svg")] if svg and path.suffix.lower() != ".svg" else [])
    for target in targets:
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=target.suffix[1:].lower(), dpi=dpi, bbox_inches="tight",
                        metadata={"Software": "ghostmaps"} if target.suffix.lower() == ".png" else None)
    return targets
