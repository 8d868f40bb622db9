"""The paper's Table 1 protocol, held out: cheap-op error per ghost pair for each d, beside a random-pair
baseline, with the pairs chosen and the ops fitted on one part of the images and the errors reported on the
other."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from analysis._core.errors import GhostmapsError
from analysis._core.numerics import REL_TOL, relative_from_sums
from analysis._core.results import Result, number, plain
from analysis._core.validation import check_count, check_odd_size
from analysis.measure.pairs import ghost_pairs
from analysis.measure.similarity import SPARSE_APOZ, channel_similarity
from analysis.reconstruct.cheap_ops import CheapOpFits, fit_cheap_op
from analysis.reconstruct.heldout import DEFAULT_SPLIT, Split, split_maps
from analysis.reconstruct.lstsq import DEFAULT_RIDGE, _check_ridge, _layer_maps
from analysis.reconstruct.similarity import reconstructability
from analysis.stats import DEFAULT_TOL
from analysis.stats.intervals import mean_interval, ratio_interval

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["ReconstructionTable", "reconstruction_table"]

MSE_NOTE = ("mse_raw is in the layer's own units (this network, layer and images): not comparable with the MSE "
            "of the paper's Table 1 (ResNet-50 layer1, its own scale); compare rel_error")


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


@dataclass(eq=False)
class ReconstructionTable(Result):
    """Result of :func:`reconstruction_table`. ``records`` (and ``rows()``, as plain data): one dict per
    (pair, d): ``kind`` ('pair' or 'random'), ``src``, ``dst``, ``d``, ``rel_error`` (held out: SSE / centred
    SS of dst, the primary number) with ``rel_error_low``/``rel_error_high`` (jackknife over held-out images for
    a pair, t over the random pairs for the baseline), ``rel_error_fit`` (in-sample, optimistic), ``r2``
    (1 - rel_error), ``mse_raw`` (held out, in the layer's units: see ``MSE_NOTE``), ``n`` (pairs averaged) and
    ``sparse`` (a channel of the pair is zero on ≥ 80 % of the fit images' positions, APoZ: its similarity and
    fit rest on few positions; None for the random row). ``split``: the images' split; ``pairs_from``: how the
    pairs were chosen."""

    records: list[dict[str, Any]]
    ds: tuple[int, ...]
    n_random: int
    seed: int
    split: Split
    pairs_from: str

    _COLUMNS = ("kind", "src", "dst", "d", "rel_error", "rel_error_low", "rel_error_high", "rel_error_fit", "r2",
                "mse_raw", "n", "sparse")
    _FLOATS = ("rel_error", "rel_error_low", "rel_error_high", "rel_error_fit", "r2", "mse_raw")

    def rows(self) -> list[dict[str, Any]]:
        return [plain({k: r.get(k) for k in self._COLUMNS}) for r in self.records]

    def to_dict(self) -> dict[str, Any]:
        return {"ds": list(self.ds), "n_random": self.n_random, "seed": self.seed, "split": self.split.to_dict(),
                "pairs_from": self.pairs_from, "mse_note": MSE_NOTE, "rows": self.rows()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        rows = [{k: number(v) if k in cls._FLOATS else v for k, v in r.items()} for r in data["rows"]]
        return cls(rows, tuple(int(d) for d in data["ds"]), int(data["n_random"]), int(data["seed"]),
                   Split.from_dict(data["split"]), str(data["pairs_from"]))

    def __str__(self) -> str:
        keys: list[tuple[str, Any, Any]] = []
        cell: dict[tuple[Any, ...], dict[str, Any]] = {}
        for r in self.records:
            key = (r["kind"], r["src"], r["dst"])
            if key not in keys:
                keys.append(key)
            cell[key + (r["d"],)] = r
        head = ["pair".ljust(16)] + [f"d={d}: held-out (in-sample)".rjust(26) for d in self.ds]
        lines = [f"relative error, {self.split}; pairs {self.pairs_from}", " ".join(head)]
        for key in keys:
            name = f"{key[1]} -> {key[2]}" if key[0] == "pair" else f"random (n={self.n_random})"
            if (cell.get(key + (self.ds[0],)) or {}).get("sparse"):
                name += " *"
            vals = []
            for d in self.ds:
                r = cell.get(key + (d,))
                vals.append((f"{r['rel_error']:.3f} ({r['rel_error_fit']:.3f})" if r else "-").rjust(26))
            lines.append(" ".join([name.ljust(16)] + vals))
        if any(r.get("sparse") for r in self.records):
            lines.append(f"* sparse: a channel zero on >= {SPARSE_APOZ:.0%} of the fit positions (APoZ); its "
                         "similarity and fit rest on the few positions where it is not")
        lines.append(f"({MSE_NOTE})")
        return "\n".join(lines)


def _choose_pairs(fit_x: torch.Tensor, k: int, metric: str, seed: int,
                  fit_groups: Sequence[Any] | None = None) -> list[tuple[int, int]]:
    """The k best exclusive pairs on the fit images; for ``"r2"`` its own held-out split inside them (by photo
    when the fit images' photos are known and at least two)."""
    if metric == "r2":
        by_photo = fit_groups is not None and len(set(fit_groups)) >= 2
        sim = reconstructability(fit_x, d=3, split=DEFAULT_SPLIT if fit_x.shape[0] >= 2 else None, seed=seed,
                                 groups=fit_groups if by_photo else None)
    else:
        sim = channel_similarity(fit_x, metric=metric)
    return [(p.i, p.j) for p in ghost_pairs(sim, k=k)]  # map j made from map i, i < j


def _heldout_rows(fit_x: torch.Tensor, eval_x: torch.Tensor, pairs: list[tuple[int, int]], d: int,
                  ridge: float, eval_groups: Sequence[Any] | None = None) -> list[dict[str, float]]:
    """Each pair's op fitted on ``fit_x``, scored on ``eval_x``: relative error with the package's rule for a
    constant target (a finite floor, never a perfect 0 for an inexact fit) and a jackknife interval over
    ``eval_groups`` (the photos of the held-out images) when given, else over images."""
    si = torch.as_tensor([p[0] for p in pairs], device=fit_x.device)
    dj = torch.as_tensor([p[1] for p in pairs], device=fit_x.device)
    fit = fit_cheap_op(fit_x[:, si].transpose(0, 1), fit_x[:, dj].transpose(0, 1), d=d, ridge=ridge)
    assert isinstance(fit, CheapOpFits)  # P x N x H x W maps in: P fits out
    src = eval_x[:, si].transpose(0, 1).double()
    dst = eval_x[:, dj].transpose(0, 1).double()  # P x N x H x W
    pred = fit.predict(src)
    err = ((pred - dst) ** 2).sum((2, 3))  # P x N
    ss = ((dst - dst.mean((1, 2, 3), keepdim=True)) ** 2).sum((2, 3))
    sumsq = (dst ** 2).sum((1, 2, 3)).cpu().numpy()
    m = dst.shape[1] * dst.shape[2] * dst.shape[3]
    out = []
    for p in range(len(pairs)):
        e, v = err[p].cpu().numpy(), ss[p].cpu().numpy()
        est = ratio_interval(e, v, groups=eval_groups)
        rel = float(relative_from_sums(e.sum(), v.sum(), sumsq[p], constant_target="floor"))
        low, high = est.low, est.high
        if v.sum() <= REL_TOL * sumsq[p]:  # a constant held-out target: the floored ratio is a lower bound
            low, high = rel, (rel if rel == 0.0 else math.inf)
        out.append({"rel_error": rel, "rel_error_low": low, "rel_error_high": high,
                    "rel_error_fit": float(fit.rel_error[p]), "r2": 1.0 - rel, "mse_raw": float(err[p].sum()) / m})
    return out


def reconstruction_table(maps: Any, pairs: Any = 3, ds: Sequence[int] = (1, 3, 5, 7), n_random: int = 64,
                         seed: int = 0, *, heldout: Any = None, split: float | None = DEFAULT_SPLIT,
                         groups: Sequence[Any] | None = None, metric: str = "pearson",
                         ridge: float = DEFAULT_RIDGE) -> ReconstructionTable:
    """GhostNet's Table 1, held out: for each pair (i -> j) and each d, the d x d op making map j from map i,
    fitted on the fit images and reported on the held-out ones (relative error first; raw MSE is labelled as
    not comparable with the paper's).

    Args:
        maps: N x C x H x W maps of one layer.
        pairs: an int k: the k most similar exclusive pairs by ``metric`` ("pearson", "cosine" or "r2") on the
            fit images; or explicit pairs ((i, j) tuples, ``GhostPairs``, ...), used as given.
        ds: kernel sizes. n_random / seed: random ordered pairs of different live channels for the baseline
            row per d (drawn with ``seed``).
        heldout / split / groups: where to report (see :func:`~analysis.reconstruct.heldout.split_maps`);
            ``split=None`` is in-sample and labelled so.
    """
    x = _layer_maps(maps)
    c = x.shape[1]
    if isinstance(ds, (int, np.integer)):
        ds = (ds,)
    ds_t = tuple(check_odd_size(v, "each of ds") for v in ds)
    if not ds_t:
        raise GhostmapsError("ds must list at least one odd kernel size, e.g. (1, 3, 5, 7)")
    n_random = check_count(n_random, "n_random", hint=" (number of random baseline pairs)")
    if metric not in ("pearson", "cosine", "r2"):
        raise GhostmapsError(f"metric must be 'pearson', 'cosine' or 'r2', got {metric!r}")
    ridge = _check_ridge(ridge)
    fit_x, eval_x, sp = split_maps(x, heldout, split, seed, groups)
    fit_groups = eval_groups = None  # the photos of each side of the split, when known
    if groups is not None and sp.eval_index is not None:
        held = set(sp.eval_index)
        fit_groups = [g for i, g in enumerate(groups) if i not in held]
        eval_groups = [groups[i] for i in sp.eval_index]
    if isinstance(pairs, (int, np.integer)) and not isinstance(pairs, bool):
        if pairs < 1:
            raise GhostmapsError(f"pairs must be >= 1 (how many pairs to choose) or a list of pairs; got {pairs}")
        plist = _choose_pairs(fit_x, int(pairs), metric, seed, fit_groups)
        pairs_from = f"chosen by {metric} on the fit images"
        if not plist:
            raise GhostmapsError("the layer has fewer than two live channels on the fit images: no pair to fit.")
    else:
        plist = _pair_list(pairs, c)
        pairs_from = "given"
    rng = np.random.default_rng(seed)
    live = np.flatnonzero(fit_x.abs().amax(dim=(0, 2, 3)).cpu().numpy() > 0)
    pool = live if len(live) >= 2 else np.arange(c)
    rand: list[tuple[int, int]] = []
    if len(pool) >= 2:
        for _ in range(int(n_random)):
            i, j = rng.choice(pool, size=2, replace=False)
            rand.append((int(i), int(j)))
    apoz = (fit_x.abs() <= DEFAULT_TOL).double().mean(dim=(0, 2, 3)).cpu().numpy()
    rows: list[dict[str, Any]] = []
    for d in ds_t:
        if not plist and not rand:
            continue
        res = _heldout_rows(fit_x, eval_x, plist + rand, d, ridge, eval_groups)
        for (i, j), r in zip(plist, res, strict=False):
            rows.append({"kind": "pair", "src": i, "dst": j, "d": d, **r, "n": 1,
                         "sparse": bool(max(apoz[i], apoz[j]) >= SPARSE_APOZ)})
        if rand:
            rest = res[len(plist):]
            est = mean_interval([r["rel_error"] for r in rest])
            rows.append({"kind": "random", "src": None, "dst": None, "d": d, "rel_error": est.value,
                         "rel_error_low": est.low, "rel_error_high": est.high,
                         "rel_error_fit": float(np.mean([r["rel_error_fit"] for r in rest])),
                         "r2": 1.0 - est.value, "mse_raw": float(np.mean([r["mse_raw"] for r in rest])),
                         "n": len(rand)})
    return ReconstructionTable(records=rows, ds=ds_t, n_random=len(rand), seed=seed, split=sp, pairs_from=pairs_from)
