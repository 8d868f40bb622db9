"""The multiple-choice knapsack behind a replacement plan: from each group (a layer) pick at most one option (a
ratio), each with a loss and a saving in one or two budgets (MACs, parameters), so that the savings reach what
the budget requires at the least summed loss.

Solved exactly by dynamic programming over *discretised* savings: ``dp[j]`` is the least loss that saves at
least ``j`` units (capped at the required number), in one or two dimensions. Discretisation makes it exact
for the rounded problem only, so it is solved twice:

* **conservative**: option savings rounded *down* to units and the requirement rounded *up*: every plan it
  returns truly meets the budget (its loss is an upper bound on the true optimum);
* **optimistic**: savings rounded *up* and the requirement *down*: a relaxation, whose least loss is a lower
  bound on the true optimum.

The gap between the two bounds the sub-optimality of the returned plan; with ``unit=1`` on integer savings it
is zero and the answer is the exact optimum (tests check it against brute force over every choice).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from analysis._core.errors import GhostmapsError

__all__ = ["BudgetError", "Knapsack", "solve_knapsack"]


class BudgetError(GhostmapsError):
    """A budget that cannot be met (or is not a fraction in (0, 1]); the message says what is reachable."""


@dataclass(frozen=True)
class Knapsack:
    """A solution: ``picks[g]`` is the option chosen in group ``g`` (-1: none), ``loss`` its summed loss,
    ``savings`` its exact summed savings per dimension, ``lower_bound`` the optimistic relaxation's loss (the
    true optimum lies in [lower_bound, loss]) and ``units`` the discretisation used per dimension."""

    picks: tuple[int, ...]
    loss: float
    savings: tuple[int, ...]
    lower_bound: float
    units: tuple[int, ...]

    @property
    def gap(self) -> float:
        """``loss - lower_bound``: how much worse than the optimum the plan can be (0: exact)."""
        return max(0.0, self.loss - self.lower_bound)


def _dp(losses: list[np.ndarray], weights: list[np.ndarray], need: tuple[int, ...]
        ) -> tuple[float, tuple[int, ...] | None]:
    """Least summed loss with discretised savings ``weights`` (per group: options x dims, ints >= 0) reaching
    ``need`` (per dim), and the picks; (inf, None) when unreachable."""
    shape = tuple(n + 1 for n in need)
    dp = np.full(shape, np.inf)  # dp[j]: least loss saving at least j (cells capped at need)
    dp[(0,) * len(need)] = 0.0
    aranges = [np.arange(s) for s in shape]
    choices: list[np.ndarray] = []
    for loss, w in zip(losses, weights, strict=True):
        best, pick = dp.copy(), np.full(shape, -1, dtype=np.int16)
        for k in range(len(loss)):
            idx = [np.maximum(a - int(w[k, d]), 0) for d, a in enumerate(aranges)]
            cand = dp[np.ix_(*idx)] + float(loss[k])
            better = cand < best
            best = np.where(better, cand, best)
            pick = np.where(better, k, pick)
        choices.append(pick)
        dp = best
    target = tuple(need)
    if not np.isfinite(dp[target]):
        return float("inf"), None
    picks: list[int] = []
    cell = list(target)
    for g in range(len(losses) - 1, -1, -1):
        k = int(choices[g][tuple(cell)])
        picks.append(k)
        if k >= 0:
            cell = [max(c - int(weights[g][k, d]), 0) for d, c in enumerate(cell)]
    return float(dp[target]), tuple(reversed(picks))


def solve_knapsack(losses: Sequence[Sequence[float]], savings: Sequence[Sequence[Sequence[int]]],
                   required: Sequence[int], units: Sequence[int] | None = None) -> Knapsack:
    """Pick at most one option per group reaching ``required`` savings at the least summed loss.

    Args:
        losses: per group, each option's loss (finite, >= 0).
        savings: per group, each option's saving per dimension (ints >= 0), e.g. ``[[macs, params], ...]``.
        required: the saving needed per dimension (<= 0: no requirement in that dimension).
        units: the discretisation per dimension (default 1: exact, fine while the required savings are small
            numbers; pass e.g. ``total // 2000`` for MAC counts).

    Raises:
        BudgetError: when even the largest savings of every group fall short in some dimension.
    """
    req = tuple(max(0, int(r)) for r in required)
    dims = len(req)
    if dims not in (1, 2):
        raise GhostmapsError(f"solve_knapsack handles one or two budgets, got {dims}.")
    unit = tuple(1 for _ in req) if units is None else tuple(max(1, int(u)) for u in units)
    if len(unit) != dims or len(losses) != len(savings):
        raise GhostmapsError("solve_knapsack: units must give one unit per budget and savings one entry per group.")
    ls = [np.asarray(g, dtype=np.float64).reshape(-1) for g in losses]
    ws = [np.asarray(g, dtype=np.int64).reshape(len(ls[i]), dims) for i, g in enumerate(savings)]
    for loss_g, w in zip(ls, ws, strict=True):
        if (~np.isfinite(loss_g)).any() or (loss_g < 0).any() or (w < 0).any():
            raise GhostmapsError("solve_knapsack: losses must be finite and >= 0 and savings >= 0.")
    reach = [sum(int(w[:, d].max(initial=0)) for w in ws) for d in range(dims)]
    short = [d for d in range(dims) if reach[d] < req[d]]
    if short:
        raise BudgetError(f"the budget needs savings {req} but at most {tuple(reach)} can be reached.")
    u = np.asarray(unit)
    need_up = tuple(-(-r // s) for r, s in zip(req, unit, strict=True))
    loss, picks = _dp(ls, [w // u for w in ws], need_up)
    if picks is None:  # reachable only within the rounding: cannot happen with unit 1 (reach checked)
        raise BudgetError(f"the savings {req} are reachable (at most {tuple(reach)}) only within the "
                          f"discretisation units {unit}; pass finer units (a larger resolution).")
    need_down = tuple(r // s for r, s in zip(req, unit, strict=True))
    bound, _ = _dp(ls, [-(-w // u) for w in ws], need_down)
    total = tuple(sum(int(ws[g][k, d]) for g, k in enumerate(picks) if k >= 0) for d in range(dims))
    return Knapsack(picks, float(loss), total, float(min(bound, loss)), unit)
