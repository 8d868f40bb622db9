"""The paper's Table 1 protocol: cheap-op error per ghost pair for each d, beside a random-pair baseline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from analysis._core.errors import GhostmapsError
from analysis._core.results import Result, plain
from analysis._core.validation import check_count, check_odd_size
from analysis.reconstruct.cheap_ops import CheapOpFits, fit_cheap_op
from analysis.reconstruct.lstsq import DEFAULT_RIDGE, _check_ridge, _layer_maps

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["ReconstructionTable", "reconstruction_table"]


# ----------------------------------------------------------------------------------------------------------
# Table 1


def _pair_list(pairs: Any, c: int) -> list[tuple[int, int]]:
    """Duck-typed pairs: (i, j) tuples, objects with ``.i``/``.j``, dicts with 'i'/'j', or a ``.pairs`` holder."""
    if hasattr(pairs, "pairs") and not isinstance(pairs, (list, tuple)):
        pairs = pairs.pairs
    out = []
    for p in pairs:
        if hasattr(p, "i") and hasattr(p, "j"):
            i, j = p.i, p.j
        elif isinstance(p, dict) and "i" in p and "j" in p:
            i, j = p["i"], p["j"]
        else:
            try:
                i, j = p
            except (TypeError, ValueError):
                raise GhostmapsError(f"pairs must hold (i, j) channel index pairs (or objects with .i and .j); "
                                 f"got {p!r}") from None
        for v in (i, j):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < c:
                raise GhostmapsError(f"pairs: channel index {v!r} in {p!r} is not an int in [0, {c}); "
                                 f"the maps have {c} channels")
        if i == j:
            raise GhostmapsError(f"pairs: ({i}, {j}) maps a channel to itself; pick two different channels")
        out.append((int(i), int(j)))
    return out


@dataclass
class ReconstructionTable(Result):
    """Result of :func:`reconstruction_table`. ``records`` (and ``rows()``, as plain data): one dict per
    (pair, d) with keys ``kind`` ('pair' or 'random'), ``src``, ``dst``, ``d``, ``mse``, ``rel_error``, ``r2``,
    ``n`` (number of pairs averaged: 1 for a pair row, ``n_random`` for the random baseline, whose src/dst are
    None)."""

    records: list[dict[str, Any]]
    ds: tuple[int, ...]
    n_random: int
    seed: int

    _COLUMNS = ("kind", "src", "dst", "d", "mse", "rel_error", "r2", "n")

    def rows(self) -> list[dict[str, Any]]:
        return [plain({k: r[k] for k in self._COLUMNS}) for r in self.records]

    def to_dict(self) -> dict[str, Any]:
        return {"ds": list(self.ds), "n_random": self.n_random, "seed": self.seed, "rows": self.rows()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls([dict(r) for r in data["rows"]], tuple(int(d) for d in data["ds"]), int(data["n_random"]),
                   int(data["seed"]))

    def __str__(self) -> str:
        keys: list[tuple[str, Any, Any]] = []
        cell: dict[tuple[Any, ...], dict[str, Any]] = {}
        for r in self.records:
            key = (r["kind"], r["src"], r["dst"])
            if key not in keys:
                keys.append(key)
            cell[key + (r["d"],)] = r
        head = ["pair".ljust(16)] + [f"d={d}: MSE (rel)".rjust(22) for d in self.ds]
        lines = [" ".join(head)]
        for key in keys:
            name = f"{key[1]} -> {key[2]}" if key[0] == "pair" else f"random (n={self.n_random})"
            vals = []
            for d in self.ds:
                r = cell.get(key + (d,))
                vals.append((f"{r['mse']:.4g} ({r['rel_error']:.3f})" if r else "-").rjust(22))
            lines.append(" ".join([name.ljust(16)] + vals))
        return "\n".join(lines)


def reconstruction_table(maps: Any, pairs: Any, ds: Sequence[int] = (1, 3, 5, 7), n_random: int = 64,
                         seed: int = 0, ridge: float = DEFAULT_RIDGE) -> ReconstructionTable:
    """GhostNet Table 1 protocol: for each chosen pair (i -> j) and each d, fit the d x d op making map j
    from map i over all images of ``maps`` (N x C x H x W) and report its MSE and relative error.

    A baseline row per d averages the same fit over ``n_random`` random ordered pairs of different channels
    (drawn with ``seed``, from the non-dead channels when at least two exist), so "ghost pair" errors can be
    read against what any two channels of the layer give.
    """
    x = _layer_maps(maps)
    c = x.shape[1]
    plist = _pair_list(pairs, c)
    if isinstance(ds, (int, np.integer)):
        ds = (ds,)
    ds_t = tuple(check_odd_size(v, "each of ds") for v in ds)
    if not ds_t:
        raise GhostmapsError("ds must list at least one odd kernel size, e.g. (1, 3, 5, 7)")
    n_random = check_count(n_random, "n_random", hint=" (number of random baseline pairs)")
    ridge = _check_ridge(ridge)
    rng = np.random.default_rng(seed)
    live = np.flatnonzero(x.abs().amax(dim=(0, 2, 3)).cpu().numpy() > 0)
    pool = live if len(live) >= 2 else np.arange(c)
    rand: list[tuple[int, int]] = []
    if len(pool) >= 2:
        for _ in range(int(n_random)):
            i, j = rng.choice(pool, size=2, replace=False)
            rand.append((int(i), int(j)))
    all_pairs = plist + rand
    rows: list[dict[str, Any]] = []
    for d in ds_t:
        if not all_pairs:
            continue
        si = torch.as_tensor([p[0] for p in all_pairs], device=x.device)
        dj = torch.as_tensor([p[1] for p in all_pairs], device=x.device)
        fit = fit_cheap_op(x[:, si].transpose(0, 1), x[:, dj].transpose(0, 1), d=d, ridge=ridge)
        assert isinstance(fit, CheapOpFits)  # P x N x H x W maps in: P fits out
        for k, (i, j) in enumerate(plist):
            rows.append({"kind": "pair", "src": i, "dst": j, "d": d, "mse": float(fit.mse[k]),
                         "rel_error": float(fit.rel_error[k]), "r2": float(fit.r2[k]), "n": 1})
        if rand:
            sl = slice(len(plist), None)
            rows.append({"kind": "random", "src": None, "dst": None, "d": d, "mse": float(fit.mse[sl].mean()),
                         "rel_error": float(fit.rel_error[sl].mean()), "r2": float(fit.r2[sl].mean()),
                         "n": len(rand)})
    return ReconstructionTable(records=rows, ds=ds_t, n_random=len(rand), seed=seed)
