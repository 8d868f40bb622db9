"""The verification report of a replacement as a figure: error per replaced layer, and savings vs agreement."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from analysis._core.errors import GhostmapsError


def verification(report: Any | Sequence[Any], *, title: str | None = None,
                 labels: Sequence[str] | None = None) -> Figure:
    """Two panels from ``analysis.verify_replacement`` report(s).

    Left: relative output error per replaced layer of the (last) report, inside the network (errors of
    earlier layers included) and in isolation (the new layer on the original input). Right: top-1
    agreement with the original, with its interval, against the MAC and parameter savings
    (1 - after/before), one point per report, e.g. one report per number of replaced layers (the
    agreement-vs-savings curve).
    """
    reports = list(report) if isinstance(report, (list, tuple)) else [report]
    if not reports or not all(hasattr(r, "layers") and hasattr(r, "top1_agreement") for r in reports):
        raise GhostmapsError("verification() needs a VerificationReport or a list of them "
                             "(from analysis.verify_replacement)")
    if labels is not None and len(labels) != len(reports):
        raise GhostmapsError(f"labels has {len(labels)} entries for {len(reports)} reports; give one per report")
    last = reports[-1]
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax, ax2 = fig.subplots(1, 2, width_ratios=(3, 2))

    names = [c.name for c in last.layers]
    if names:
        pos = np.arange(len(names))
        ax.bar(pos - 0.2, [c.rel_error for c in last.layers], 0.4, label="in network", color="#377eb8")
        ax.bar(pos + 0.2, [c.isolated_rel_error for c in last.layers], 0.4, label="isolated", color="#ff7f00")
        ax.set_xticks(pos, names, rotation=70, ha="right", fontsize=7 if len(names) > 12 else 9)
        ax.legend(frameon=False)
    else:
        ax.text(0.5, 0.5, "no replaced layers", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("relative output error (SSE / centred SS)")
    ax.set_title("error per replaced layer")

    macs = [1 - r.macs_after / r.macs_before if r.macs_before else 0.0 for r in reports]
    params = [1 - r.params_after / r.params_before if r.params_before else 0.0 for r in reports]
    agree = np.array([r.top1_agreement for r in reports])
    est = [getattr(getattr(r, "agreement", None), "top1", None) for r in reports]
    if all(e is not None for e in est):
        lows = np.array([max(0.0, e.low) for e in est])
        highs = np.array([min(1.0, e.high) for e in est])
        ax2.errorbar(macs, agree, yerr=[agree - lows, highs - agree], fmt="none", ecolor="#e41a1c", alpha=0.5,
                     capsize=3, label=f"{est[-1].level:.0%} interval")
    ax2.plot(macs, agree, "o-", color="#e41a1c", label="MAC savings")
    ax2.plot(params, agree, "s--", color="#4daf4a", label="parameter savings")
    if labels is not None:
        for x, y, text in zip(macs, agree, labels, strict=True):
            ax2.annotate(str(text), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax2.set_xlabel("savings (1 - after / before)")
    ax2.set_ylabel("top-1 agreement with the original")
    ax2.set_ylim(-0.02, 1.02)
    ax2.set_xlim(0, max([*macs, *params, 0.0]) * 1.1 + 0.02)
    ax2.grid(alpha=0.3)
    ax2.legend(frameon=False, loc="lower left")
    ax2.set_title(f"savings vs agreement ({last.n_images} images)")
    if title:
        fig.suptitle(title)
    return fig
