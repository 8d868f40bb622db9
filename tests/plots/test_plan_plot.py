"""analysis.plots.plan_tradeoff draws the plan's table as given (points read back from the figure)."""

from __future__ import annotations

import numpy as np
import pytest

from analysis import GhostmapsError
from analysis.convert.plan import LayerOption, ReplacementPlan, choose_plan
from analysis.plots import plan_tradeoff, save_figure


def _plan() -> ReplacementPlan:
    opts = []
    for i, name in enumerate(("a", "b", "c")):
        for s in (2, 4):
            kl = 0.01 * (i + 1) * s
            opts.append(LayerOption(name, s, kl, kl * 0.8, kl * 1.2, kl, 2 * kl, 16, "t over images",
                                    (100 + 50 * i) * (s - 1), 10 * s))
    plan = ReplacementPlan(opts, {}, 0.7, None, 1000, 500, 1000, 500, 0.0, 0.0, (1, 3, 16, 16))
    return choose_plan(plan, macs=0.7)


def test_points_are_the_table(tmp_path):
    plan = _plan()
    fig = plan_tradeoff(plan, [choose_plan(plan, macs=b) for b in (0.9, 0.7, 0.5)], title="t")
    ax, ax2 = fig.axes
    drawn = np.vstack([c.get_offsets() for c in ax.collections if c.get_offsets().size and
                       type(c).__name__ == "PathCollection"])
    want = np.array([[o.macs_saved / 1000, o.kl] for o in plan.options])
    assert sorted(map(tuple, drawn.round(12))) == sorted(map(tuple, want.round(12)))
    named = {t.get_text() for t in ax.texts}
    assert named == {n for n in plan.ratios} and named  # the chosen convs, and only those, are named
    line = ax2.lines[0].get_xydata()
    assert line[:, 0].tolist() == sorted(line[:, 0].tolist()) and len(line) == 3
    assert save_figure(fig, tmp_path / "plan.png")[0].stat().st_size > 0


def test_from_dict_and_rows_and_bad_input():
    plan = _plan()
    assert len(plan_tradeoff(plan.to_dict()).axes) == 1
    assert len(plan_tradeoff(plan.rows()).axes) == 1
    with pytest.raises(GhostmapsError, match="ReplacementPlan"):
        plan_tradeoff(42)
    with pytest.raises(GhostmapsError, match="empty"):
        plan_tradeoff([])
