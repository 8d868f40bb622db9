"""Layer structure for a Ghost module: which channels to keep as intrinsic maps, which cheap op makes each
ghost, the resulting relative error (:func:`ghostability`) and the largest ratio within an error budget
(:func:`suggest_ratio`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from analysis._core.errors import GhostmapsError
from analysis._core.results import Result, floats, number, plain
from analysis._core.validation import check_odd_size, check_ratio
from analysis.reconstruct.lstsq import (
    DEFAULT_RIDGE,
    _check_ridge,
    _layer_maps,
    _pair_fits,
    _PairFits,
    _relative,
)

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Ghostability", "RatioSuggestion", "ghostability", "suggest_ratio"]


# ----------------------------------------------------------------------------------------------------------
# ghostability


@dataclass(eq=False)
class Ghostability(Result):
    """Result of :func:`ghostability`: a Ghost-module structure for one layer and its reconstruction error.

    Structure (exactly what ``GhostModule(ratio=ratio, dw_size=d)`` realises, whose output is
    ``cat([primary, cheap])[:, :C]`` with ``m = ceil(C / ratio)`` primary maps and ``m * (ratio - 1)`` cheap
    maps, cheap map ``p * (ratio - 1) + r`` made from primary map ``p``):

    * ``intrinsic`` - the m channels the primary conv keeps, in primary-output order; ``intrinsic[p]`` is
      primary map p. Only the last one may feed fewer than ``ratio - 1`` ghosts (the unused cheap slots
      fall at the end and are cut by the ``[:C]`` slice).
    * ``slots[p]`` - the ghost channels made from ``intrinsic[p]``, in cheap-slot order (``len <= ratio-1``).
    * ``assignment`` - ghost channel -> its intrinsic source channel (the same information as a dict).
    * ``module_order`` - original channel index at each GhostModule output position
      (``intrinsic + [g for s in slots for g in s]``, length C); undo it with ``np.argsort(module_order)``.
    * ``kernel`` (C x d x d), ``bias`` (C,) - per original channel: channel j is predicted as
      ``conv2d(maps[:, source_of(j)], kernel[j], bias[j], padding=d//2)``; an intrinsic channel has the
      identity (centre-delta) kernel and bias 0. :meth:`cheap_weights` packs the ghosts' kernels into the
      ``(m*(ratio-1), 1, d, d)`` depthwise weight layout.
    * ``rel_error`` (C,) - per-channel MSE / variance (0 for intrinsic and dead channels); ``overall_error``
      = sum of squared residuals of all channels / sum of their centred sums of squares.
    * ``dead`` (C,) - all-zero channels.

    ``rows()``: one per channel (intrinsic or not, its source channel and module position, bias, error, dead);
    equality compares ``to_dict()``.
    """

    ratio: int
    d: int
    intrinsic: list[int]
    slots: list[list[int]]
    assignment: dict[int, int]
    module_order: list[int]
    kernel: np.ndarray
    bias: np.ndarray
    rel_error: np.ndarray
    overall_error: float
    dead: np.ndarray

    def cheap_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Depthwise weight ``(m*(ratio-1), 1, d, d)`` and bias ``(m*(ratio-1),)`` in cheap-slot order
        (unused trailing slots are zero), float32, for initialising a GhostModule's cheap operation."""
        r1 = self.ratio - 1
        m = len(self.intrinsic)
        w = torch.zeros(m * r1, 1, self.d, self.d)
        b = torch.zeros(m * r1)
        for p, ghosts in enumerate(self.slots):
            for r, g in enumerate(ghosts):
                w[p * r1 + r, 0] = torch.as_tensor(self.kernel[g])
                b[p * r1 + r] = float(self.bias[g])
        return w, b

    def predict(self, maps: Any) -> torch.Tensor:
        """Reconstruct all C channels of ``maps`` (N x C x H x W) from the intrinsic ones (float64, CPU)."""
        x = _layer_maps(maps).to(torch.float64).cpu()
        out = x.clone()
        src = torch.as_tensor([self.assignment[g] for g in sorted(self.assignment)], dtype=torch.long)
        ghosts = sorted(self.assignment)
        if ghosts:
            k = torch.as_tensor(self.kernel[ghosts], dtype=torch.float64)[:, None]
            b = torch.as_tensor(self.bias[ghosts], dtype=torch.float64)
            out[:, ghosts] = F.conv2d(x[:, src], k, b, padding=self.d // 2, groups=len(ghosts))
        return out

    _COLUMNS = ("channel", "intrinsic", "source", "position", "bias", "rel_error", "dead")

    def rows(self) -> list[dict[str, Any]]:
        position = {ch: k for k, ch in enumerate(self.module_order)}
        return [plain({"channel": j, "intrinsic": j not in self.assignment, "source": self.assignment.get(j, j),
                       "position": position[j], "bias": self.bias[j], "rel_error": self.rel_error[j],
                       "dead": self.dead[j]}) for j in range(len(self.module_order))]

    def to_dict(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "d": self.d, "intrinsic": plain(self.intrinsic),
                "slots": plain(self.slots), "assignment": plain(self.assignment),
                "module_order": plain(self.module_order), "kernel": plain(self.kernel),
                "bias": plain(self.bias), "rel_error": plain(self.rel_error),
                "overall_error": plain(self.overall_error), "dead": plain(self.dead)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        d, c = int(data["d"]), len(data["module_order"])
        return cls(ratio=int(data["ratio"]), d=d, intrinsic=[int(v) for v in data["intrinsic"]],
                   slots=[[int(v) for v in s] for s in data["slots"]],
                   assignment={int(g): int(s) for g, s in data["assignment"].items()},
                   module_order=[int(v) for v in data["module_order"]],
                   kernel=floats(data["kernel"]).reshape(c, d, d), bias=floats(data["bias"]),
                   rel_error=floats(data["rel_error"]), overall_error=number(data["overall_error"]),
                   dead=np.asarray(data["dead"], dtype=bool))

    def __str__(self) -> str:
        return (f"Ghostability(ratio={self.ratio}, d={self.d}, C={len(self.module_order)}, "
                f"intrinsic={len(self.intrinsic)}, overall_error={self.overall_error:.4g})")


def _select_intrinsic(e: np.ndarray, ss: np.ndarray, m: int) -> list[int]:
    """Greedy facility location: repeatedly add the channel that most reduces the total error.

    The error of a non-intrinsic channel j is its best SSE over the chosen sources (initially ``ss_j``, the
    bias-only fit); choosing c makes c exact and lowers every j to ``min(cost_j, e[c, j])``. This objective
    is monotone submodular, so greedy is within (1 - 1/e) of the best uncapacitated choice; capacities are
    handled afterwards by the assignment. Ties go to the lowest index.
    """
    c = len(ss)
    cost = ss.astype(np.float64).copy()
    chosen: list[int] = []
    free = np.ones(c, dtype=bool)
    for _ in range(m):
        red = np.clip(cost[None, :] - e, 0.0, None)  # e has a zero diagonal: red[c, c] = cost[c]
        red[:, ~free] = 0.0
        gain = red.sum(1)
        gain[~free] = -np.inf
        k = int(np.argmax(gain))
        chosen.append(k)
        free[k] = False
        cost = np.minimum(cost, e[k])
        cost[k] = 0.0
    return chosen


def _assign(e: np.ndarray, intrinsic: list[int], ghosts: list[int], ratio: int) -> list[list[int]]:
    """Minimum-total-SSE assignment of ghosts to intrinsic channels, each feeding <= ratio - 1 ghosts and
    only one feeding fewer than ratio - 1 (so the unused cheap slots can sit at the end of the module).

    Exact for given capacities (Hungarian algorithm on intrinsic channels replicated ratio - 1 times). The
    one short intrinsic channel is the least-loaded one of the unconstrained-capacity optimum.
    Returns ``slots`` aligned with ``intrinsic`` (the short one moved last by the caller).
    """
    from scipy.optimize import linear_sum_assignment

    r1 = ratio - 1
    m = len(intrinsic)
    spare = m * r1 - len(ghosts)
    cost = e[np.ix_(intrinsic, ghosts)].T  # (G, m)

    def solve(caps: list[int]) -> list[list[int]]:
        cols = [p for p in range(m) for _ in range(caps[p])]
        if not ghosts:
            return [[] for _ in range(m)]
        rows, picked = linear_sum_assignment(cost[:, cols])
        slots: list[list[int]] = [[] for _ in range(m)]
        for r, col in zip(rows, picked, strict=True):
            slots[cols[col]].append(ghosts[r])
        return [sorted(s) for s in slots]

    slots = solve([r1] * m)
    short = [p for p in range(m) if len(slots[p]) < r1]
    if len(short) > 1:
        p_short = min(short, key=lambda p: (len(slots[p]), p))
        caps = [r1] * m
        caps[p_short] = r1 - spare
        slots = solve(caps)
    return slots


def _ghostability_from_fits(fits: _PairFits, ratio: int) -> Ghostability:
    d = fits.d
    c = len(fits.ss)
    m = math.ceil(c / ratio)
    e = fits.sse
    intrinsic = sorted(_select_intrinsic(e, fits.ss, m))
    chosen = set(intrinsic)
    ghosts = [j for j in range(c) if j not in chosen]
    slots = _assign(e, intrinsic, ghosts, ratio)
    # put the (at most one) short intrinsic channel last, keep the rest in ascending channel order
    order = sorted(range(m), key=lambda p: (len(slots[p]) < ratio - 1, intrinsic[p]))
    intrinsic = [intrinsic[p] for p in order]
    slots = [slots[p] for p in order]
    assignment = {g: intrinsic[p] for p, s in enumerate(slots) for g in s}
    q = d * d
    kernel = np.zeros((c, q))
    bias = np.zeros(c)
    kernel[intrinsic, q // 2] = 1.0
    sse = np.zeros(c)
    for g, s in assignment.items():
        kernel[g] = fits.theta[s, :, g]
        bias[g] = fits.bias[s, g]
        sse[g] = fits.sse[s, g]
    rel = _relative(sse, fits.ss, fits.sumsq)
    total_ss = float(fits.ss.sum())
    total_sse = float(sse.sum())
    overall = float(_relative(np.array(total_sse), np.array(total_ss), np.array(float(fits.sumsq.sum()))))
    module_order = intrinsic + [g for s in slots for g in s]
    return Ghostability(ratio=ratio, d=d, intrinsic=intrinsic, slots=slots, assignment=assignment,
                        module_order=module_order, kernel=kernel.reshape(c, d, d), bias=bias, rel_error=rel,
                        overall_error=overall, dead=fits.dead.copy())


def ghostability(maps: Any, ratio: int = 2, d: int = 3, ridge: float = DEFAULT_RIDGE) -> Ghostability:
    """How well a Ghost module with this ``ratio`` and d x d cheap ops could reproduce a layer's maps.

    ``maps``: N x C x H x W. Steps: (1) fit all C x C cheap ops at once (``best_sources``' machinery);
    (2) choose ``m = ceil(C / ratio)`` intrinsic channels greedily (facility location on the SSE matrix:
    each step adds the channel that most reduces the summed error of all channels, so one representative
    per ghost group is picked first; dead channels never help and are picked only to fill up); (3) assign
    every other channel to one intrinsic source, at most ``ratio - 1`` per source, minimising the summed
    SSE exactly (Hungarian); (4) report per-channel and overall relative error
    ``sum_j SSE_j / sum_j sum (x_j - mean x_j)^2`` (intrinsic channels count as exact). The cheap ops are
    linear (conv + bias, i.e. conv + BN); a ReLU after the cheap op is not modelled.
    """
    ratio = check_ratio(ratio)
    d = check_odd_size(d)
    ridge = _check_ridge(ridge)
    return _ghostability_from_fits(_pair_fits(_layer_maps(maps), d, ridge), ratio)


@dataclass(eq=False)
class RatioSuggestion(Result):
    """Result of :func:`suggest_ratio`. ``ratio``: the largest tried ratio with ``errors[ratio] <=
    max_error`` (None if even the smallest exceeds it: keep the plain conv). ``errors``: overall relative
    error per tried ratio. ``ghostability``: the full result for the chosen ratio (None if none).
    ``rows()``: one per tried ratio; equality compares ``to_dict()``."""

    ratio: int | None
    errors: dict[int, float]
    max_error: float
    d: int
    ghostability: Ghostability | None = field(default=None, repr=False)

    _COLUMNS = ("ratio", "error", "within_budget", "chosen")

    def rows(self) -> list[dict[str, Any]]:
        return [plain({"ratio": r, "error": e, "within_budget": e <= self.max_error, "chosen": r == self.ratio})
                for r, e in self.errors.items()]

    def to_dict(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "errors": plain(self.errors), "max_error": plain(self.max_error), "d": self.d,
                "ghostability": self.ghostability.to_dict() if self.ghostability is not None else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        g = data.get("ghostability")
        return cls(None if data["ratio"] is None else int(data["ratio"]),
                   {int(r): number(e) for r, e in data["errors"].items()}, number(data["max_error"]), int(data["d"]),
                   None if g is None else Ghostability.from_dict(g))


def suggest_ratio(maps: Any, max_error: float = 0.1, ratios: Sequence[int] = (2, 3, 4, 5, 6, 8), d: int = 3,
                  ridge: float = DEFAULT_RIDGE) -> RatioSuggestion:
    """Largest Ghost ratio whose :func:`ghostability` overall error is within ``max_error``.

    The C x C fits are computed once and reused for every ratio.
    """
    if isinstance(max_error, bool) or not isinstance(max_error, (int, float)) or not max_error >= 0:
        raise GhostmapsError(f"max_error must be a number >= 0 (a relative error budget, e.g. 0.1); got {max_error!r}")
    if isinstance(ratios, (int, np.integer)) or len(ratios) == 0:
        raise GhostmapsError(f"ratios must be a non-empty sequence of ints >= 2, e.g. (2, 3, 4); got {ratios!r}")
    rs = sorted({check_ratio(r, "each of ratios") for r in ratios})
    d = check_odd_size(d)
    ridge = _check_ridge(ridge)
    fits = _pair_fits(_layer_maps(maps), d, ridge)
    results = {r: _ghostability_from_fits(fits, r) for r in rs}
    errors = {r: g.overall_error for r, g in results.items()}
    ok = [r for r in rs if errors[r] <= max_error]
    best = max(ok) if ok else None
    return RatioSuggestion(ratio=best, errors=errors, max_error=float(max_error), d=d,
                           ghostability=results[best] if best is not None else None)


