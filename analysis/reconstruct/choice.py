"""Which channels a Ghost module keeps (intrinsic) and which it makes from which (ghosts), under the Ghost
capacity: each intrinsic channel feeds at most ``ratio - 1`` ghosts, and only the last may feed fewer.

The input is a C x C cost matrix, ``cost[i, j]`` = the error of making channel j from channel i (zero
diagonal); the choice minimises the summed cost of the ghosts.

* ``ratio == 2``: m = ceil(C / 2) intrinsic channels and C - m ghosts, one ghost per intrinsic channel at most,
  is a **minimum-weight perfect matching** on the complete graph with edge weight
  ``w{i, j} = min(cost[i, j], cost[j, i])`` (the cheaper direction decides which one is intrinsic); an odd C
  gets a dummy vertex at weight 0 to every channel (its partner is the intrinsic channel without a ghost).
  Exact (Edmonds' blossom algorithm, networkx, on integer weights) up to ``exact_max`` channels; above that a
  heuristic: the assignment relaxation (Hungarian; its cost / 2 is a lower bound on the optimum) gives a
  first matching from its cycle cover, the blossom algorithm on the sparse graph of each channel's 8
  cheapest partners plus those edges improves it, then 2-swaps of matched edges until none helps.
* ``ratio > 2``: greedy facility location for the intrinsic set, the exact capacitated assignment of ghosts
  for that set (Hungarian on replicated intrinsic columns), then improving swaps of an intrinsic channel with
  a ghost (the ghost takes over the group, the old intrinsic channel takes the ghost's place), alternating
  with re-solving the assignment, until neither improves. On small layers the exact mixed-integer program
  (HiGHS) runs as well, within a time limit, and the better answer is kept with HiGHS's proven lower bound.
* ``method="greedy"``: the facility-location pick plus exact assignment alone (what the project used before),
  kept as the baseline the gain is measured against.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis._core.errors import GhostmapsError
from analysis._core.results import Result, plain
from analysis.reconstruct.capacitated import _assign, _greedy_intrinsic, _milp, _role_swaps, structure_cost
from analysis.reconstruct.matching import (
    _cycle_cover_matching,
    _exact_matching,
    _matching_to_structure,
    _pair_weights,
    _sparse_matching,
    _two_swaps,
)

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["EXACT_MAX", "EXACT_MAX_MILP", "METHODS", "IntrinsicChoice", "choose_intrinsic"]

EXACT_MAX = 160
#: The largest layer the exact s > 2 integer program runs on by default (HiGHS: ~0.3-15 s at C = 48-64).
EXACT_MAX_MILP = 64
METHODS = ("auto", "exact", "heuristic", "greedy")
_TOL = 1e-12

@dataclass(eq=False)
class IntrinsicChoice(Result):
    """A Ghost structure for one layer.

    ``intrinsic``: the m kept channels in primary-output order (the one short group, if any, last);
    ``slots[p]``: the ghosts made from ``intrinsic[p]`` (ascending); ``cost``: summed cost of the ghosts;
    ``method``: how it was found; ``lower_bound``: a proven lower bound on the best possible cost where one is
    known (s = 2: the assignment relaxation), else None.
    """

    intrinsic: list[int]
    slots: list[list[int]]
    cost: float
    method: str
    lower_bound: float | None = None

    _COLUMNS = ("position", "intrinsic", "ghosts")

    def rows(self) -> list[dict[str, Any]]:
        """One row per primary map: its channel and the ghosts it makes (space-separated)."""
        return [{"position": p, "intrinsic": int(ch), "ghosts": " ".join(str(g) for g in s)}
                for p, (ch, s) in enumerate(zip(self.intrinsic, self.slots, strict=True))]

    def to_dict(self) -> dict[str, Any]:
        return plain({"intrinsic": self.intrinsic, "slots": self.slots, "cost": self.cost, "method": self.method,
                      "lower_bound": self.lower_bound})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        lb = data.get("lower_bound")
        return cls([int(v) for v in data["intrinsic"]], [[int(v) for v in s] for s in data["slots"]],
                   float(data["cost"]), str(data["method"]), None if lb is None else float(lb))

def _ordered(intrinsic: list[int], slots: list[list[int]], r1: int) -> tuple[list[int], list[list[int]]]:
    """Primary order: full groups by channel index, then the (at most one) short group."""
    order = sorted(range(len(intrinsic)), key=lambda p: (len(slots[p]) < r1, intrinsic[p]))
    return [intrinsic[p] for p in order], [sorted(slots[p]) for p in order]


def _choose_ratio2(cost: np.ndarray, exact: bool) -> IntrinsicChoice:
    w = _pair_weights(cost)
    if exact:
        edges, lower, method = _exact_matching(w), None, "matching (exact, blossom)"
    else:
        edges, lower = _cycle_cover_matching(w)
        edges = _two_swaps(w, _sparse_matching(w, edges))
        method = "matching (sparse blossom on 8 nearest partners + 2-swaps)"
    intrinsic, slots = _matching_to_structure(cost, edges)
    intrinsic, slots = _ordered(intrinsic, slots, 1)
    total = structure_cost(cost, intrinsic, slots)
    return IntrinsicChoice(intrinsic, slots, total, method, total if exact else lower)


def _choose_capacitated(cost: np.ndarray, ratio: int, swaps: bool, baseline: np.ndarray | None) -> IntrinsicChoice:
    c = cost.shape[0]
    m, r1 = math.ceil(c / ratio), ratio - 1
    intrinsic = sorted(_greedy_intrinsic(cost, m, baseline))
    ghosts = [j for j in range(c) if j not in set(intrinsic)]
    slots = _assign(cost, intrinsic, ghosts, r1)
    total = structure_cost(cost, intrinsic, slots)
    while swaps:
        intrinsic, slots = _role_swaps(cost, intrinsic, slots)
        ghosts = [j for j in range(c) if j not in set(intrinsic)]
        slots = _assign(cost, intrinsic, ghosts, r1)
        new = structure_cost(cost, intrinsic, slots)
        if new >= total - _TOL * max(total, 1e-300):
            total = min(total, new)
            break
        total = new
    intrinsic, slots = _ordered(intrinsic, slots, r1)
    method = "capacitated (greedy + assignment + role swaps)" if swaps else "greedy + assignment"
    return IntrinsicChoice(intrinsic, slots, structure_cost(cost, intrinsic, slots), method)


def choose_intrinsic(cost: Any, ratio: int, method: str = "auto", exact_max: int = EXACT_MAX,
                     baseline: Any = None, exact_max_milp: int = EXACT_MAX_MILP,
                     milp_time_limit: float = 10.0) -> IntrinsicChoice:
    """The Ghost structure of least summed cost for a C x C cost matrix (``cost[i, j]``: making j from i).

    ``method``: ``"auto"`` (s = 2: exact matching up to ``exact_max`` channels, the matching heuristic above;
    s > 2: the capacitated choice with swaps, and up to ``exact_max_milp`` channels also the exact
    mixed-integer program, ``milp_time_limit`` seconds at most, keeping the better), ``"exact"`` (s = 2 only,
    any size), ``"heuristic"`` (no exact method at any size) or ``"greedy"`` (the old baseline).
    ``baseline`` (C,): a channel's cost with no source (its bias-only error), where the greedy pick starts.
    """
    if method not in METHODS:
        raise GhostmapsError(f"unknown intrinsic-choice method {method!r}; use one of {', '.join(METHODS)}.")
    e = np.asarray(cost, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] != e.shape[1] or e.shape[0] == 0:
        raise GhostmapsError(f"cost must be a non-empty C x C matrix, got shape {e.shape}.")
    if not np.all(np.isfinite(e)) or e.min() < 0:
        raise GhostmapsError("cost must hold finite numbers >= 0 (errors of making channel j from i).")
    e = e.copy()
    np.fill_diagonal(e, 0.0)
    c = e.shape[0]
    base = None if baseline is None else np.asarray(baseline, dtype=np.float64).reshape(-1)
    if base is not None and base.shape != (c,):
        raise GhostmapsError(f"baseline must hold one cost per channel ({c}), got shape {base.shape}.")
    if method == "greedy":
        return _choose_capacitated(e, ratio, swaps=False, baseline=base)
    if ratio == 2 and c > 1:
        if method == "exact":
            return _choose_ratio2(e, exact=True)
        return _choose_ratio2(e, exact=method == "auto" and c <= exact_max)
    if method == "exact" and c > 1:
        raise GhostmapsError("method='exact' is available for ratio 2 only (a minimum-weight perfect matching); "
                             "use method='auto' for larger ratios (exact by integer programming on small layers).")
    heuristic = _choose_capacitated(e, ratio, swaps=True, baseline=base)
    if method == "heuristic" or c > exact_max_milp or c < 2:
        return heuristic
    found = _milp(e, ratio, milp_time_limit)
    if found is None:
        return heuristic
    intrinsic, slots, bound = found
    intrinsic, slots = _ordered(intrinsic, slots, ratio - 1)
    total = structure_cost(e, intrinsic, slots)
    if total > heuristic.cost:
        heuristic.lower_bound = bound
        return heuristic
    proven = bound >= total - 1e-9 * max(total, 1e-300)
    return IntrinsicChoice(intrinsic, slots, total, "capacitated (exact, MILP)" if proven else
                           "capacitated (MILP, stopped at its time limit)", bound)
