"""A layer's channel-similarity matrix, reordered by ghost groups, groups outlined, dead channels marked."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from analysis.plots._common import pair_colour


def similarity_heatmap(
    survey: Any,
    layer: str,
    max_groups: int = 10,
    size: float = 6.5,
    title: str | None = None,
) -> Figure:
    """Draw the C×C similarity of ``layer`` with channels ordered group by group (largest first), then the dead
    and constant channels. Each ghost group of two or more channels gets a coloured square on the diagonal
    (the largest ``max_groups`` in distinct colours, the rest in grey); dead/constant channels are marked by a
    black bar along the edges.

    Args:
        survey: a ``Survey`` (the layer needs its statistics: a survey in memory, or saved with stats=True).
        layer: the layer's name.
        max_groups: groups outlined in colour.
        size: figure size in inches.
        title: figure title (default: layer, channels, groups at τ).
    """
    entry = survey[layer]
    sim = entry.similarity
    order = entry.groups.order
    matrix = sim.to_numpy()[np.ix_(order, order)]
    c = len(order)
    fig = Figure(figsize=(size + 1.0, size))
    ax = fig.add_subplot(1, 1, 1)
    signed = bool((matrix < -1e-9).any())
    image = ax.imshow(matrix, cmap="RdBu_r" if signed else "viridis", vmin=-1 if signed else 0, vmax=1,
                      interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=f"{sim.metric} similarity")
    start = 0
    for number, group in enumerate(entry.groups.groups):
        if len(group) > 1:
            colour = pair_colour(number) if number < max_groups else "#999999"
            ax.add_patch(Rectangle((start - 0.5, start - 0.5), len(group), len(group), fill=False,
                                   edgecolor=colour, linewidth=1.5, label=f"group {number}: {len(group)} ch"))
        start += len(group)
    excluded = entry.groups.excluded
    if excluded:
        first = c - len(excluded)
        for spot in ((first - 0.5, -0.5 - 0.02 * c), (-0.5 - 0.02 * c, first - 0.5)):
            horizontal = spot[1] < 0
            ax.add_patch(Rectangle(spot, len(excluded) if horizontal else 0.02 * c,
                                   0.02 * c if horizontal else len(excluded), color="black", clip_on=False,
                                   label="dead / constant" if horizontal else "_nolegend_"))
        ax.axhline(first - 0.5, color="black", linewidth=0.6)
        ax.axvline(first - 0.5, color="black", linewidth=0.6)
    if c <= 48:
        ax.set_xticks(range(c))
        ax.set_xticklabels(order, rotation=90, fontsize=6)
        ax.set_yticks(range(c))
        ax.set_yticklabels(order, fontsize=6)
    else:
        ax.set_xlabel("channels, grouped")
        ax.set_ylabel("channels, grouped")
    handles = [p for p in ax.patches if not str(p.get_label()).startswith("_")][: max_groups + 1]
    if handles:
        ax.legend(handles=handles, fontsize=6, loc="upper right", bbox_to_anchor=(1.0, -0.06), ncol=3,
                  frameon=False)
    r = entry.redundancy
    ax.set_title(title or f"{layer} · {c} channels · {entry.groups.count} groups at |s| ≥ {r.threshold:g} · "
                          f"{len(r.dead)} dead", fontsize=9)
    fig.tight_layout()
    return fig
