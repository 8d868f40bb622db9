"""analysis.convert.knapsack against brute force over every choice."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from analysis.convert.knapsack import BudgetError, solve_knapsack


def _brute(losses, savings, required):
    """Least loss over all (k_g + 1) choices per group, by enumeration; inf when none is feasible."""
    best = np.inf
    for picks in itertools.product(*[range(-1, len(g)) for g in losses]):
        total = np.zeros(len(required), dtype=np.int64)
        loss = 0.0
        for g, k in enumerate(picks):
            if k >= 0:
                total += np.asarray(savings[g][k])
                loss += losses[g][k]
        if (total >= np.asarray(required)).all():
            best = min(best, loss)
    return best


def _case(seed, groups=5, options=3, dims=1):
    rng = np.random.default_rng(seed)
    losses = [list(rng.exponential(1.0, options)) for _ in range(groups)]
    savings = [[list(rng.integers(0, 40, dims)) for _ in range(options)] for _ in range(groups)]
    reach = np.sum([np.max(s, axis=0) for s in savings], axis=0)
    required = [int(r * rng.uniform(0.2, 0.9)) for r in reach]
    return losses, savings, required


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("seed", range(6))
def test_exact_units_match_brute_force(seed, dims):
    losses, savings, required = _case(seed, dims=dims)
    sol = solve_knapsack(losses, savings, required)
    assert sol.loss == pytest.approx(_brute(losses, savings, required), abs=1e-12)
    assert sol.gap == pytest.approx(0.0, abs=1e-12)
    # the picks are what the solution says they are, and feasible
    total = np.sum([savings[g][k] for g, k in enumerate(sol.picks) if k >= 0], axis=0)
    assert (np.atleast_1d(total) >= required).all() and tuple(np.atleast_1d(total)) == sol.savings
    assert sum(losses[g][k] for g, k in enumerate(sol.picks) if k >= 0) == pytest.approx(sol.loss)


@pytest.mark.parametrize("seed", range(1, 6))
def test_coarse_units_are_feasible_and_bracket_the_optimum(seed):
    losses, savings, required = _case(seed, groups=6, dims=1)
    best = _brute(losses, savings, required)
    sol = solve_knapsack(losses, savings, required, units=[7])
    assert sol.savings[0] >= required[0]  # truly feasible, not only after rounding
    assert sol.lower_bound - 1e-12 <= best <= sol.loss + 1e-12


def test_a_requirement_inside_the_rounding_asks_for_finer_units():
    losses, savings, required = _case(0, groups=6, dims=1)  # reachable (brute force), not after rounding down
    assert np.isfinite(_brute(losses, savings, required))
    with pytest.raises(BudgetError, match="finer units"):
        solve_knapsack(losses, savings, required, units=[7])


def test_unreachable_budget_says_what_is_reachable():
    with pytest.raises(BudgetError, match=r"at most \(5,\)"):
        solve_knapsack([[1.0, 2.0], [0.5]], [[[2], [3]], [[2]]], [6])


def test_no_requirement_picks_nothing():
    sol = solve_knapsack([[1.0], [2.0]], [[[5]], [[5]]], [0])
    assert sol.picks == (-1, -1) and sol.loss == 0.0
