"""Ghost pairs: the most similar pairs of channels in a layer."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from analysis._core.errors import GhostmapsError
from analysis._core.results import Result, number, plain
from analysis._core.validation import check_positive_int
from analysis.measure.similarity import ChannelSimilarity
from analysis.stats._pairs import triu_index

if TYPE_CHECKING:
    from typing_extensions import Self


@dataclass(frozen=True)
class GhostPair(Result):
    """Channels ``i`` < ``j`` and their similarity ``score``; ``sparse`` when either channel is zero on most
    positions (APoZ ≥ 0.8): such a pair is alike mostly for being off together, not a ghost to rely on."""

    i: int
    j: int
    score: float
    sparse: bool = False

    _COLUMNS = ("i", "j", "score", "sparse")

    @property
    def label(self) -> str:
        """``"i ~ j  (score)"``, with ``sparse`` appended for a sparse pair (Figure 1's legend, tables)."""
        return f"{self.i} ~ {self.j}  ({self.score:.3f}{', sparse' if self.sparse else ''})"

    def rows(self) -> list[dict[str, Any]]:
        return [self.to_dict()]

    def to_dict(self) -> dict[str, Any]:
        return {"i": self.i, "j": self.j, "score": plain(self.score), "sparse": bool(self.sparse)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls(int(data["i"]), int(data["j"]), number(data["score"]), bool(data.get("sparse", False)))


@dataclass
class GhostPairs(Result):
    """The top ghost pairs of a layer, best first. Iterable, indexable, and serialisable (``Result``: a row
    per pair; ``to_dict`` puts ``meta``'s keys beside layer, metric and exclusive, and ``from_dict`` reads every
    other key back into ``meta``)."""

    pairs: list[GhostPair]
    metric: str | None = None
    layer: str | None = None
    exclusive: bool = True
    meta: dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[GhostPair]:
        return iter(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> GhostPair:
        return self.pairs[index]

    _COLUMNS = ("layer", "rank", "i", "j", "score", "sparse")
    _KEYS = ("layer", "metric", "exclusive", "pairs")

    def rows(self) -> list[dict[str, Any]]:
        return [{"layer": self.layer, "rank": n + 1, **p.to_dict()} for n, p in enumerate(self.pairs)]

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "metric": self.metric, "exclusive": self.exclusive, **plain(self.meta),
                "pairs": [p.to_dict() for p in self.pairs]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        meta = {k: v for k, v in data.items() if k not in cls._KEYS}
        return cls([GhostPair.from_dict(p) for p in data["pairs"]], data.get("metric"), data.get("layer"),
                   bool(data.get("exclusive", True)), meta)

    def __str__(self) -> str:
        head = f"ghost pairs of {self.layer or 'layer'} ({self.metric or 'similarity'}):"
        rows = [f"  {n + 1}. channel {p.i:>4} ~ channel {p.j:>4}   {p.score:.4f}"
                f"{'   sparse (APoZ ≥ 0.8)' if p.sparse else ''}" for n, p in enumerate(self.pairs)]
        return "\n".join([head, *rows]) if rows else head + " none"


def ghost_pairs(
    similarity: ChannelSimilarity | torch.Tensor | np.ndarray,
    k: int | None = 3,
    exclusive: bool = True,
    absolute: bool = False,
    min_score: float | None = None,
) -> GhostPairs:
    """The ``k`` most similar channel pairs of a layer.

    Args:
        similarity: a ``ChannelSimilarity`` (dead/constant channels are left out) or a plain C×C matrix.
        k: how many pairs; None for all that qualify.
        exclusive: each channel appears in at most one pair (greedy, best first), as in the paper's Figure 1.
        absolute: rank by |score|, so strongly anti-correlated channels (one a negated ghost of the other,
            which a depthwise op can make just as cheaply) count too.
        min_score: keep only pairs whose (absolute, if asked) score is at least this.

    Returns:
        ``GhostPairs`` (pairs with i < j, best first), each flagged ``sparse`` when either channel is zero on
        at least 80% of the positions (a ``ChannelSimilarity`` knows the APoZ; a plain matrix flags none). Ties
        break by channel index, so results are deterministic.
    """
    if isinstance(similarity, ChannelSimilarity):
        matrix, valid = similarity.matrix, similarity.valid
        metric, layer = similarity.metric, similarity.layer
        sparse = similarity.sparse
    else:
        matrix = torch.as_tensor(np.asarray(similarity) if not isinstance(similarity, torch.Tensor) else similarity)
        valid = torch.ones(matrix.shape[0], dtype=torch.bool)
        sparse = torch.zeros(matrix.shape[0], dtype=torch.bool)
        metric = layer = None
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise GhostmapsError(f"similarity must be a square C×C matrix, got shape {tuple(matrix.shape)}.")
    if k is not None:
        k = check_positive_int(k, "k", hint=" (or None for all pairs)")
    matrix = matrix.detach().cpu()
    idx = torch.nonzero(valid.cpu()).flatten()
    v = int(idx.numel())
    sub = matrix if v == matrix.shape[0] else matrix[idx.unsqueeze(1), idx]
    flat = triu_index(v, 1, torch.device("cpu"))  # the valid pairs i < j in triu order (cached)
    scores = torch.nan_to_num(sub.reshape(-1).index_select(0, flat).to(torch.float64), nan=0.0)
    rank = scores.abs() if absolute else scores
    if min_score is not None:
        ok = torch.nonzero(rank >= min_score).flatten()
        flat, scores, rank = flat[ok], scores[ok], rank[ok]

    def pairs_at(at: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        f, sc, rk = (flat, scores, rank) if at is None else (flat[at], scores[at], rank[at])
        return idx[torch.div(f, v, rounding_mode="floor")], idx[f % v], sc, rk

    chosen = None
    top = max(256, 32 * k) if k is not None else 0
    if k is not None and rank.numel() > 4 * top:
        # the best pairs are among the largest ranks: every entry at least the top-th largest (ties included),
        # so the greedy pass over them is the greedy pass over all, unless it runs out (then: all of them)
        cut = torch.topk(rank, top).values[-1]
        chosen = _greedy(*pairs_at(torch.nonzero(rank >= cut).flatten()), sparse, k, exclusive)
        if len(chosen) < k:
            chosen = None
    if chosen is None:
        chosen = _greedy(*pairs_at(None), sparse, k, exclusive)
    return GhostPairs(chosen, metric=metric, layer=layer, exclusive=exclusive)


def _greedy(i: torch.Tensor, j: torch.Tensor, scores: torch.Tensor, rank: torch.Tensor, sparse: torch.Tensor,
            k: int | None, exclusive: bool) -> list[GhostPair]:
    """Pairs best first (ties by channel index), each channel at most once when ``exclusive``, up to ``k``."""
    order = np.lexsort((j.numpy(), i.numpy(), -rank.numpy()))
    chosen: list[GhostPair] = []
    used: set[int] = set()
    for idx in order.tolist():
        a, b = int(i[idx]), int(j[idx])
        if exclusive and (a in used or b in used):
            continue
        chosen.append(GhostPair(a, b, float(scores[idx]), bool(sparse[a] or sparse[b])))
        used.update((a, b))
        if k is not None and len(chosen) == k:
            break
    return chosen
