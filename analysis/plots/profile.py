"""The redundancy profile: scores along the network's depth, with their intervals and both baselines."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from analysis._core.errors import GhostmapsError

# score -> (panel title, divide by the channel count?, does a higher value mean more redundancy?)
PANELS = {
    "mean_sq_similarity": ("mean squared similarity", False, True),
    "ghost_fraction": ("channels with a ghost partner (|s| ≥ τ)", False, True),
    "participation_ratio": ("effective rank / C (participation ratio)", True, False),
    "rank99": ("99%-variance rank / C", True, False),
    "ratio": ("C / ghost groups (Ghost ratio s)", False, True),
    "mean_abs_similarity": ("mean |s| over channel pairs", False, True),
    "groups": ("ghost groups / C", True, False),
}


def direction(score: str) -> str:
    """The panel's reading direction: ``"↑ more redundant"`` or ``"↓ more redundant"``."""
    return "↑ more redundant" if PANELS[score][2] else "↓ more redundant"


def _values(survey: Any, score: str, per_channel: bool) -> dict[str, np.ndarray]:
    keys = ("observed", "low", "high", "null", "untrained", "half_a", "half_b")
    out: dict[str, list[float]] = {k: [] for k in keys}
    for layer in survey:
        s = layer.redundancy.scores[score]
        scale = max(layer.redundancy.channels, 1) if per_channel else 1
        halves = s.halves or (None, None)
        values = (s.observed, s.low, s.high, s.null.value, None if s.untrained is None else s.untrained.value,
                  *halves)
        for key, value in zip(keys, values, strict=True):
            out[key].append(np.nan if value is None else value / scale)
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


def redundancy_profile(
    survey: Any,
    scores: Sequence[str] = ("mean_sq_similarity", "participation_ratio", "ghost_fraction"),
    title: str | None = None,
    width: float | None = None,
) -> Figure:
    """Plot each score per layer in network order: the observed value (line and dots), its jackknife interval
    (band, smooth scores) or its two split-half values (small markers, threshold scores: a stability measure, not
    an interval), the noise-matched null (dashed) and the untrained network (dotted, when surveyed). Each panel
    says which way is redundant: up for the mean squared similarity, the ghost fraction and the Ghost ratio;
    *down* for the participation ratio, rank99 and ghost groups per channel. Where the line departs from the
    untrained baseline in that direction, the layer holds more alike channels than the architecture alone gives.

    Args:
        survey: a ``Survey``.
        scores: which scores, one panel each (``mean_sq_similarity``, ``participation_ratio``,
            ``ghost_fraction``, ``ratio``, ``groups``, ``mean_abs_similarity``, ``rank99`` when surveyed);
            rank-like scores are shown divided by C.
        title: figure title (default: model, images, metric, τ).
        width: figure width in inches (default grows with the number of layers).
    """
    if len(survey) == 0:
        raise GhostmapsError("the survey has no layers to plot.")
    unknown = [s for s in scores if s not in PANELS]
    if unknown or not scores:
        raise GhostmapsError(f"unknown scores {unknown}; choose from {', '.join(PANELS)}.")
    absent = [s for s in scores if any(s not in layer.redundancy.scores for layer in survey)]
    if absent:
        raise GhostmapsError(f"the survey has no {', '.join(absent)}; survey (or rescore) with rank99=True.")
    names = survey.names
    x = np.arange(len(names))
    width = width or min(24.0, max(7.0, 0.22 * len(names) + 3))
    fig = Figure(figsize=(width, 2.4 * len(scores) + 1.2))
    axes = fig.subplots(len(scores), 1, sharex=True, squeeze=False)[:, 0]
    for ax, score in zip(axes, scores, strict=True):
        label, per_channel, _ = PANELS[score]
        v = _values(survey, score, per_channel)
        if np.isfinite(v["low"]).any():
            ax.fill_between(x, v["low"], v["high"], color="#377eb8", alpha=0.25, linewidth=0,
                            label=f"{int(round(100 * survey[names[0]].redundancy.level))}% jackknife interval")
        if np.isfinite(v["half_a"]).any():
            ax.plot(np.r_[x, x], np.r_[v["half_a"], v["half_b"]], "_", color="#377eb8", markersize=6,
                    label="split halves (stability, not an interval)")
        ax.plot(x, v["observed"], "-o", color="#377eb8", markersize=3, linewidth=1.2, label="observed")
        if np.isfinite(v["null"]).any():
            ax.plot(x, v["null"], "--", color="#e41a1c", linewidth=1.0, label="noise-matched null (image pairs)")
        if np.isfinite(v["untrained"]).any():
            ax.plot(x, v["untrained"], ":", color="#4daf4a", linewidth=1.4, label="untrained network")
        ax.set_ylabel(f"{label}\n{direction(score)}", fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7, loc="upper left", ncol=4, frameon=False)
    step = max(1, len(names) // 60)
    axes[-1].set_xticks(x[::step])
    axes[-1].set_xticklabels(names[::step], rotation=90, fontsize=6)
    axes[-1].set_xlabel("layer (network order)")
    m = survey.meta
    fig.suptitle(title or f"redundancy profile · {m.get('model', '')} · {m.get('images', '?')} images · "
                          f"{m.get('metric', '')} · τ = {m.get('threshold', '')}", fontsize=10)
    fig.tight_layout()
    return fig
