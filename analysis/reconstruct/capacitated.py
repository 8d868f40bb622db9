"""The capacitated intrinsic choice for s > 2 (see :mod:`analysis.reconstruct.choice`): greedy facility
location, the exact assignment for a given intrinsic set, role swaps, and the exact integer program for small
layers. Kernels on checked input."""

from __future__ import annotations

import math

import numpy as np

_TOL = 1e-12


def structure_cost(cost: np.ndarray, intrinsic: list[int], slots: list[list[int]]) -> float:
    """Summed cost of the ghosts of a structure."""
    return float(sum(cost[p, g] for p, s in zip(intrinsic, slots, strict=True) for g in s))


def _greedy_intrinsic(cost: np.ndarray, m: int, baseline: np.ndarray | None) -> list[int]:
    """Greedy facility location: repeatedly add the channel that most lowers the summed cost, a non-intrinsic
    channel costing its cheapest source so far (initially ``baseline``, e.g. its bias-only error; default its
    largest cost from any source)."""
    c = cost.shape[0]
    cur = (cost.max(axis=0) if baseline is None else baseline).astype(np.float64).copy()
    chosen: list[int] = []
    free = np.ones(c, dtype=bool)
    for _ in range(m):
        red = np.clip(cur[None, :] - cost, 0.0, None)  # cost has a zero diagonal: red[k, k] = cur[k]
        red[:, ~free] = 0.0
        gain = red.sum(1)
        gain[~free] = -np.inf
        k = int(np.argmax(gain))
        chosen.append(k)
        free[k] = False
        cur = np.minimum(cur, cost[k])
        cur[k] = 0.0
    return chosen


#: Up to this many intrinsic channels the assignment tries every group as the short one (exact).
EXACT_ASSIGN_MAX = 64
#: Above it, the short groups of the unconstrained optimum tried (the least loaded first).
_SHORT_CANDIDATES = 8


def _assign(cost: np.ndarray, intrinsic: list[int], ghosts: list[int], r1: int) -> list[list[int]]:
    """Minimum-cost assignment of ghosts to intrinsic channels, each feeding <= r1 ghosts and only one fewer
    (Hungarian on replicated columns). The unconstrained optimum (every group <= r1) is a lower bound; when at
    most one of its groups is short it is the answer. Otherwise one group is made the short one and the rest
    full, each choice solved exactly: every group up to ``EXACT_ASSIGN_MAX`` intrinsic channels (exact), above
    that the ``_SHORT_CANDIDATES`` least-loaded short groups of the unconstrained optimum (a heuristic)."""
    from scipy.optimize import linear_sum_assignment

    m = len(intrinsic)
    if not ghosts:
        return [[] for _ in range(m)]
    spare = m * r1 - len(ghosts)
    sub = cost[np.ix_(intrinsic, ghosts)].T  # (G, m)

    def solve(caps: list[int]) -> tuple[float, list[list[int]]]:
        cols = [p for p in range(m) for _ in range(caps[p])]
        rows, picked = linear_sum_assignment(sub[:, cols])
        slots: list[list[int]] = [[] for _ in range(m)]
        for r, col in zip(rows, picked, strict=True):
            slots[cols[col]].append(ghosts[r])
        return float(sub[rows, [cols[k] for k in picked]].sum()), slots

    _, slots = solve([r1] * m)
    short = [p for p in range(m) if len(slots[p]) < r1]
    if len(short) <= 1:
        return slots
    if m <= EXACT_ASSIGN_MAX:
        candidates = list(range(m))
    else:
        candidates = sorted(short, key=lambda p: (len(slots[p]), p))[:_SHORT_CANDIDATES]
    best: tuple[float, list[list[int]]] | None = None
    for p_short in candidates:
        caps = [r1] * m
        caps[p_short] = r1 - spare
        got = solve(caps)
        if best is None or got[0] < best[0]:
            best = got
    assert best is not None
    return best[1]


def _role_swaps(cost: np.ndarray, intrinsic: list[int], slots: list[list[int]],
                max_rounds: int = 1000) -> tuple[list[int], list[list[int]]]:
    """Swap an intrinsic channel p with a ghost g while that lowers the cost: g takes over p's group, p takes
    g's place (in g's old group, or in the group g now leads when g was p's own ghost). Group sizes do not
    change, so the capacity and the one-short-group layout hold throughout. Several swaps on disjoint groups
    are applied per round."""
    c = cost.shape[0]
    intrinsic = list(intrinsic)
    slots = [list(s) for s in slots]
    m = len(intrinsic)
    for _ in range(max_rounds):
        owner = np.full(c, -1)
        for p, s in enumerate(slots):
            owner[s] = p
        member = np.zeros((m, c))
        for p, s in enumerate(slots):
            member[p, s] = 1.0
        load = cost @ member.T  # load[g, p] = cost of making group p's ghosts from g
        head = np.asarray(intrinsic)
        cur = load[head, np.arange(m)]  # (m,)
        ghosts = np.flatnonzero(owner >= 0)
        if ghosts.size == 0:
            break
        q = owner[ghosts]  # group of each ghost
        src = head[q]
        # delta[p, t]: swap intrinsic p with ghost ghosts[t]
        delta = load[ghosts].T - cur[:, None]
        own = q[None, :] == np.arange(m)[:, None]
        delta += np.where(own, cost[ghosts[None, :], head[:, None]],
                          cost[src[None, :], head[:, None]] - cost[src, ghosts][None, :])
        scale = max(float(cur.sum()), 1e-300)
        if delta.min(initial=0.0) >= -_TOL * scale:
            break
        touched = np.zeros(m, dtype=bool)
        for idx in np.argsort(delta, axis=None):
            p, t = divmod(int(idx), ghosts.size)
            if delta[p, t] >= -_TOL * scale:
                break
            g, gq = int(ghosts[t]), int(q[t])
            if touched[p] or touched[gq]:
                continue
            touched[p] = touched[gq] = True
            old = intrinsic[p]
            if gq == p:
                slots[p] = [k for k in slots[p] if k != g] + [old]
            else:
                slots[gq] = [k for k in slots[gq] if k != g] + [old]
            intrinsic[p] = g
    return intrinsic, slots


def _milp(cost: np.ndarray, ratio: int, time_limit: float) -> tuple[list[int], list[list[int]], float] | None:
    """The capacitated choice as a mixed-integer program (HiGHS via scipy): binaries x_ij (j made from i),
    y_i (i intrinsic), z_i (i the one short group); returns (intrinsic, slots, proven lower bound) or None
    when no solution was found in ``time_limit`` seconds."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    c = cost.shape[0]
    m, r1 = math.ceil(c / ratio), ratio - 1
    src, dst = np.nonzero(~np.eye(c, dtype=bool))
    nx_ = src.size
    y0, z0 = nx_, nx_ + c
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    lo: list[np.ndarray] = []
    hi: list[np.ndarray] = []
    r = 0

    def block(rr: np.ndarray, cc: np.ndarray, vv: np.ndarray, n_rows: int, low: float, high: float) -> None:
        nonlocal r
        rows.append(rr + r)
        cols.append(cc)
        vals.append(vv)
        lo.append(np.full(n_rows, low))
        hi.append(np.full(n_rows, high))
        r += n_rows

    xs = np.arange(nx_)
    ch = np.arange(c)
    ones_x, ones_c = np.ones(nx_), np.ones(c)
    # every channel is intrinsic or made from exactly one source: sum_i x_ij + y_j = 1
    block(np.concatenate([dst, ch]), np.concatenate([xs, y0 + ch]), np.concatenate([ones_x, ones_c]), c, 1, 1)
    # capacity: sum_j x_ij <= r1 y_i ; fullness unless short: sum_j x_ij >= r1 y_i - r1 z_i ; z_i <= y_i
    block(np.concatenate([src, ch]), np.concatenate([xs, y0 + ch]), np.concatenate([ones_x, -r1 * ones_c]), c,
          -np.inf, 0)
    block(np.concatenate([src, ch, ch]), np.concatenate([xs, y0 + ch, z0 + ch]),
          np.concatenate([ones_x, -r1 * ones_c, r1 * ones_c]), c, 0, np.inf)
    block(np.concatenate([ch, ch]), np.concatenate([z0 + ch, y0 + ch]), np.concatenate([ones_c, -ones_c]), c,
          -np.inf, 0)
    # only from an intrinsic source: x_ij <= y_i (the strong linking rows)
    block(np.concatenate([xs, xs]), np.concatenate([xs, y0 + src]), np.concatenate([ones_x, -ones_x]), nx_,
          -np.inf, 0)
    block(np.zeros(c, dtype=int), y0 + ch, ones_c, 1, m, m)
    block(np.zeros(c, dtype=int), z0 + ch, ones_c, 1, -np.inf, 1)
    a = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(r, nx_ + 2 * c))
    objective = np.concatenate([cost[src, dst], np.zeros(2 * c)])
    res = milp(objective, constraints=LinearConstraint(a.tocsr(), np.concatenate(lo), np.concatenate(hi)),
               integrality=np.ones(nx_ + 2 * c), bounds=Bounds(0, 1), options={"time_limit": time_limit})
    if res.x is None:
        return None
    x = np.rint(res.x)
    intrinsic = [int(i) for i in np.flatnonzero(x[y0:z0] > 0.5)]
    slots = [[int(j) for j in dst[(src == i) & (x[:nx_] > 0.5)]] for i in intrinsic]
    bound = getattr(res, "mip_dual_bound", None)
    bound = float(bound) if bound is not None and np.isfinite(bound) else (float(res.fun) if res.status == 0 else None)
    return intrinsic, slots, bound if bound is not None else -np.inf
