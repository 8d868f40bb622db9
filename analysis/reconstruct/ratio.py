"""The largest Ghost ratio whose held-out ghost error stays within a budget (:func:`suggest_ratio`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis._core.errors import GhostmapsError
from analysis._core.results import Result, number, plain
from analysis._core.validation import check_odd_size, check_ratio
from analysis.reconstruct.heldout import DEFAULT_SPLIT, channel_weights, split_maps
from analysis.reconstruct.lstsq import (
    DEFAULT_RIDGE,
    _check_ridge,
    _layer_maps,
    _pair_fits,
)
from analysis.reconstruct.structure import Ghostability, _from_fits

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["DEFAULT_MAX_ERROR", "RatioSuggestion", "suggest_ratio"]

#: Default budget on the ghosts' held-out relative error. (Before the ghost-only, held-out report the default
#: was 0.1 on an error diluted by the exact intrinsic channels, about a third of this number at s = 2.)
DEFAULT_MAX_ERROR = 0.3


@dataclass(eq=False)
class RatioSuggestion(Result):
    """Result of :func:`suggest_ratio`. ``ratio``: the largest tried ratio with ``errors[ratio] <=
    max_error`` (None if even the smallest exceeds it: keep the plain conv). ``errors``: the ghosts' held-out
    error per tried ratio (``Ghostability.ghost_error``). ``ghostability``: the full result for the chosen
    ratio (None if none)."""

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
                   {int(r): number(e) for r, e in data["errors"].items()}, number(data["max_error"]),
                   int(data["d"]), None if g is None else Ghostability.from_dict(g))


def suggest_ratio(maps: Any, max_error: float = DEFAULT_MAX_ERROR, ratios: Sequence[int] = (2, 3, 4, 5, 6, 8),
                  d: int = 3, *, bn: Any = None, heldout: Any = None, split: float | None = DEFAULT_SPLIT,
                  seed: int = 0, groups: Sequence[Any] | None = None, choice: str = "auto",
                  ridge: float = DEFAULT_RIDGE) -> RatioSuggestion:
    """Largest Ghost ratio whose :func:`~analysis.reconstruct.ghostability` held-out ghost error is within
    ``max_error``; the C x C fits are made once and reused for every ratio. Other arguments as ghostability."""
    if isinstance(max_error, bool) or not isinstance(max_error, (int, float)) or not max_error >= 0:
        raise GhostmapsError(f"max_error must be a number >= 0 (a relative error budget, e.g. 0.3); got {max_error!r}")
    if isinstance(ratios, (int, np.integer)) or len(ratios) == 0:
        raise GhostmapsError(f"ratios must be a non-empty sequence of ints >= 2, e.g. (2, 3, 4); got {ratios!r}")
    rs = sorted({check_ratio(r, "each of ratios") for r in ratios})
    d = check_odd_size(d)
    ridge = _check_ridge(ridge)
    x = _layer_maps(maps)
    fit_x, eval_x, sp = split_maps(x, heldout, split, seed, groups)
    w = channel_weights(bn, x.shape[1])
    eval_groups = None if groups is None or sp.eval_index is None else [str(groups[i]) for i in sp.eval_index]
    fits = _pair_fits(fit_x, d, ridge)
    results = {r: _from_fits(fits, eval_x, sp, r, w, choice, eval_groups, 0.95) for r in rs}
    errors = {r: g.ghost_error for r, g in results.items()}
    ok = [r for r in rs if errors[r] <= max_error]
    best = max(ok) if ok else None
    return RatioSuggestion(ratio=best, errors=errors, max_error=float(max_error), d=d,
                           ghostability=results[best] if best is not None else None)
