"""Minimum-weight perfect matching for the s = 2 Ghost structure (see :mod:`analysis.reconstruct.choice`):
the exact blossom algorithm, and the heuristic for large layers (assignment relaxation, sparse blossom,
2-swaps). Kernels on checked input."""

from __future__ import annotations

import numpy as np

_TOL = 1e-12


def _pair_weights(cost: np.ndarray) -> np.ndarray:
    """Symmetric weight of pairing i with j (the cheaper direction), with a zero-weight dummy for odd C."""
    c = cost.shape[0]
    w = np.minimum(cost, cost.T)
    if c % 2:
        w = np.pad(w, ((0, 1), (0, 1)))
    return w


def _matching_to_structure(cost: np.ndarray, edges: list[tuple[int, int]]) -> tuple[list[int], list[list[int]]]:
    c = cost.shape[0]
    intrinsic, slots = [], []
    for a, b in edges:
        if a == c or b == c:  # matched with the dummy: intrinsic without a ghost
            intrinsic.append(b if a == c else a)
            slots.append([])
        elif cost[a, b] <= cost[b, a]:
            intrinsic.append(a)
            slots.append([b])
        else:
            intrinsic.append(b)
            slots.append([a])
    return intrinsic, slots


def _blossom(w: np.ndarray, iu: np.ndarray, ju: np.ndarray) -> list[tuple[int, int]]:
    """Minimum-weight perfect matching on the graph with edges (iu, ju) (networkx's blossom, integer weights:
    weights are scaled to 2^40 and rounded, so ties within ~1e-12 of the largest weight may break either way)."""
    import networkx as nx

    top = float(w.max(initial=0.0))
    scale = (2.0**40) / top if top > 0 else 1.0
    g = nx.Graph()
    g.add_nodes_from(range(w.shape[0]))
    g.add_weighted_edges_from(zip(iu.tolist(), ju.tolist(), np.rint(w[iu, ju] * scale).astype(np.int64).tolist(),
                                  strict=True))
    return [tuple(sorted(e)) for e in nx.min_weight_matching(g)]


def _exact_matching(w: np.ndarray) -> list[tuple[int, int]]:
    iu, ju = np.triu_indices(w.shape[0], 1)
    return _blossom(w, iu, ju)


def _sparse_matching(w: np.ndarray, start: list[tuple[int, int]], k: int = 8) -> list[tuple[int, int]]:
    """Exact matching restricted to each vertex's ``k`` cheapest partners plus the edges of ``start`` (so a
    perfect matching exists and the result is never worse than ``start``)."""
    n = w.shape[0]
    near = np.argsort(np.where(np.eye(n, dtype=bool), np.inf, w), axis=1)[:, :min(k, n - 1)]
    pairs = {tuple(sorted((i, int(j)))) for i in range(n) for j in near[i]} | {tuple(sorted(e)) for e in start}
    iu = np.array([a for a, _ in pairs])
    ju = np.array([b for _, b in pairs])
    edges = _blossom(w, iu, ju)
    if len(edges) * 2 != n or sum(w[a, b] for a, b in edges) > sum(w[a, b] for a, b in start):
        return list(start)
    return edges


def _cycle_cover_matching(w: np.ndarray) -> tuple[list[tuple[int, int]], float]:
    """Matching from the assignment relaxation's cycle cover, and the relaxation's lower bound."""
    from scipy.optimize import linear_sum_assignment

    n = w.shape[0]
    big = np.where(np.eye(n, dtype=bool), float(w.max(initial=0.0)) * n + 1.0, w)
    rows, perm = linear_sum_assignment(big)
    lower = float(w[rows, perm].sum()) / 2.0
    seen = np.zeros(n, dtype=bool)
    edges: list[tuple[int, int]] = []
    left: list[int] = []
    for start in range(n):
        if seen[start]:
            continue
        cyc = [start]
        seen[start] = True
        nxt = perm[start]
        while nxt != start:
            cyc.append(int(nxt))
            seen[nxt] = True
            nxt = perm[nxt]
        k = len(cyc)
        if k % 2 == 0:
            halves = [[(cyc[t], cyc[(t + 1) % k]) for t in range(o, k, 2)] for o in (0, 1)]
            edges += min(halves, key=lambda es: sum(w[a, b] for a, b in es))
        else:  # leave one vertex out; the rest is a path with one perfect matching
            best = None
            for o in range(k):
                path = [cyc[(o + 1 + t) % k] for t in range(k - 1)]
                es = [(path[t], path[t + 1]) for t in range(0, k - 1, 2)]
                val = sum(w[a, b] for a, b in es)
                if best is None or val < best[0]:
                    best = (val, es, cyc[o])
            assert best is not None
            edges += best[1]
            left.append(best[2])
    while left:  # odd cycles come in pairs (n is even): pair the leftovers greedily by weight
        a = left.pop(0)
        b = min(left, key=lambda v: w[a, v])
        left.remove(b)
        edges.append((a, b))
    return edges, lower


def _two_swaps(w: np.ndarray, edges: list[tuple[int, int]], max_rounds: int = 10_000) -> list[tuple[int, int]]:
    """Improve a perfect matching by exchanging partners between two matched edges while that lowers the weight;
    each round applies the best exchange for every edge that is not yet touched in that round."""
    a = np.array([e[0] for e in edges])
    b = np.array([e[1] for e in edges])
    for _ in range(max_rounds):
        cur = w[a, b]
        base = cur[:, None] + cur[None, :]
        alt1 = w[a[:, None], a[None, :]] + w[b[:, None], b[None, :]]  # (a_k, a_l), (b_k, b_l)
        alt2 = w[a[:, None], b[None, :]] + w[b[:, None], a[None, :]]  # (a_k, b_l), (b_k, a_l)
        gain = base - np.minimum(alt1, alt2)
        np.fill_diagonal(gain, 0.0)
        scale = max(float(base.max(initial=0.0)), 1e-300)
        if gain.max(initial=0.0) <= _TOL * scale:
            break
        flat = np.argsort(-gain, axis=None)
        touched = np.zeros(len(a), dtype=bool)
        for idx in flat:
            k, m = divmod(int(idx), len(a))
            if gain[k, m] <= _TOL * scale:
                break
            if touched[k] or touched[m]:
                continue
            touched[k] = touched[m] = True
            ak, bk, am, bm = a[k], b[k], a[m], b[m]
            if alt1[k, m] <= alt2[k, m]:
                a[k], b[k], a[m], b[m] = ak, am, bk, bm
            else:
                a[k], b[k], a[m], b[m] = ak, bm, bk, am
    return list(zip(a.tolist(), b.tolist(), strict=True))
