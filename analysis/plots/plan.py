"""A replacement plan as a figure: each candidate's measured loss against what it saves, and the plan's
predicted loss against the cost it keeps over several budgets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from analysis._core.errors import GhostmapsError

_MARKERS = ("o", "s", "^", "D", "v", "P")
_COLOURS = ("#377eb8", "#ff7f00", "#4daf4a", "#984ea3", "#e41a1c", "#a65628")


def _rows(plan: Any) -> tuple[list[dict[str, Any]], int | None]:
    """The table rows and the original's MACs from a plan, its ``to_dict()`` or its rows."""
    if hasattr(plan, "rows") and hasattr(plan, "macs_before"):
        return plan.rows(), plan.macs_before
    if isinstance(plan, Mapping) and "options" in plan:
        return list(plan["options"]), plan.get("macs_before")
    if isinstance(plan, Sequence) and all(isinstance(r, Mapping) for r in plan):
        return list(plan), None
    raise GhostmapsError("plan_tradeoff() needs a ReplacementPlan (analysis.plan_replacement), its to_dict(), "
                         "or its rows()")


def plan_tradeoff(plan: Any, frontier: Sequence[Any] | None = None, *, title: str | None = None) -> Figure:
    """Left: every candidate (conv, ratio) of ``plan``'s sensitivity table, its mean held-out KL with the
    interval against its MAC saving (as a share of the original's MACs when known), one marker per ratio,
    the chosen ones filled and named. Right (when ``frontier`` is given: plans of one table under several
    budgets, e.g. ``[choose_plan(plan, macs=b) for b in (0.9, 0.8, 0.7)]``): each plan's predicted loss
    against the fraction of MACs it keeps."""
    rows, macs0 = _rows(plan)
    if not rows:
        raise GhostmapsError("the plan's table is empty: nothing to draw")
    fig = Figure(figsize=(12 if frontier else 7, 4.5), layout="constrained")
    axes = fig.subplots(1, 2 if frontier else 1)
    ax = axes[0] if frontier else axes
    scale = macs0 or 1.0
    ratios = sorted({int(r["ratio"]) for r in rows})
    for i, s in enumerate(ratios):
        sel = [r for r in rows if int(r["ratio"]) == s]
        x = np.array([r["macs_saved"] / scale for r in sel])
        y = np.array([r["kl"] for r in sel])
        low = np.array([np.nan if r.get("kl_low") is None else r["kl_low"] for r in sel])
        high = np.array([np.nan if r.get("kl_high") is None else r["kl_high"] for r in sel])
        err = np.vstack([np.clip(y - low, 0, None), np.clip(high - y, 0, None)])
        colour, marker = _COLOURS[i % len(_COLOURS)], _MARKERS[i % len(_MARKERS)]
        ax.errorbar(x, y, yerr=np.nan_to_num(err), fmt="none", ecolor=colour, alpha=0.4, capsize=2)
        chosen = np.array([bool(r.get("chosen")) for r in sel])
        ax.scatter(x[~chosen], y[~chosen], marker=marker, facecolors="none", edgecolors=colour, label=f"s = {s}")
        ax.scatter(x[chosen], y[chosen], marker=marker, color=colour,
                   label=f"s = {s}, chosen" if chosen.any() else None)
        for r, xi, yi in zip(sel, x, y, strict=True):
            if r.get("chosen"):
                ax.annotate(str(r["name"]), (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xlabel("MACs saved (share of the original)" if macs0 else "MACs saved")
    ax.set_ylabel("KL(original || replaced), nats, held out")
    kls = np.array([r["kl"] for r in rows], dtype=float)
    if (kls > 0).all():
        ax.set_yscale("log")
    elif (kls > 0).any():
        ax.set_yscale("symlog", linthresh=float(kls[kls > 0].min()))
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    ax.set_title("each conv replaced alone: loss vs saving")
    if frontier:
        ax2 = axes[1]
        pts = sorted((p.macs_fraction, p.predicted_loss, p.macs_budget) for p in frontier)
        ax2.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color="#e41a1c")
        for kept, loss, budget in pts:
            if budget is not None:
                ax2.annotate(f"≤{budget:.0%}", (kept, loss), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax2.set_xlabel("MACs kept (fraction of the original)")
        ax2.set_ylabel("predicted loss (sum of single-layer KL), nats")
        ax2.grid(alpha=0.3)
        ax2.set_title("plans under several budgets")
    if title:
        fig.suptitle(title)
    return fig
