"""Ghost groups: channels that are all near-copies of each other, by agglomerative clustering.

Distances are d_ij = 1 − |s_ij| between valid channels (dead and constant ones are left out), clustered by
scikit-learn's ``AgglomerativeClustering`` on the precomputed matrix and cut at d = 1 − τ. With the default
``complete`` linkage every two channels of a group have |s| ≥ τ, so "a group of k" means k channels that a
single intrinsic map plus k − 1 cheap operations could stand in for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from analysis._core.errors import GhostmapsError
from analysis._core.validation import DEFAULT_THRESHOLD, LINKAGES, check_linkage, check_threshold
from analysis.measure.similarity import ChannelSimilarity

__all__ = ["LINKAGES", "GhostGroups", "ghost_groups", "grouped"]
from analysis._core.results import Result, plain

if TYPE_CHECKING:
    from typing_extensions import Self



@dataclass
class GhostGroups(Result):
    """Ghost groups of one layer.

    labels: per channel, its group number (0 = largest group), or −1 for a dead/constant channel.
    groups: every group's channels (singletons included), largest first, ties by smallest channel.
    ``rows()``: one per channel (its group and the group's size; −1 and 0 for an excluded channel);
    ``to_dict`` puts ``meta``'s keys beside the fields and ``from_dict`` reads every other key back into ``meta``.
    """

    labels: list[int]
    groups: list[list[int]]
    threshold: float
    linkage: str = "complete"
    metric: str | None = None
    layer: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def count(self) -> int:
        """Number of groups among the valid channels (singletons count: each needs its own intrinsic map)."""
        return len(self.groups)

    @property
    def multi(self) -> list[list[int]]:
        """Groups with at least two channels (the ghost groups worth showing)."""
        return [g for g in self.groups if len(g) > 1]

    @property
    def excluded(self) -> list[int]:
        """Dead or constant channels, outside every group."""
        return [c for c, lab in enumerate(self.labels) if lab < 0]

    @property
    def order(self) -> list[int]:
        """All channels, group by group (largest first), then the excluded ones: a heatmap ordering."""
        return [c for g in self.groups for c in g] + self.excluded

    def __len__(self) -> int:
        return self.count

    _COLUMNS = ("layer", "channel", "group", "group_size")
    _KEYS = ("layer", "metric", "threshold", "linkage", "count", "groups", "labels")

    def rows(self) -> list[dict[str, Any]]:
        return [{"layer": self.layer, "channel": c, "group": lab, "group_size": len(self.groups[lab]) if lab >= 0
                 else 0} for c, lab in enumerate(self.labels)]

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "metric": self.metric, "threshold": plain(self.threshold),
                "linkage": self.linkage, "count": self.count, "groups": plain(self.groups),
                "labels": plain(self.labels), **plain(self.meta)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        meta = {k: v for k, v in data.items() if k not in cls._KEYS}
        return cls([int(v) for v in data["labels"]], [[int(c) for c in g] for g in data["groups"]],
                   float(data["threshold"]), data.get("linkage", "complete"), data.get("metric"), data.get("layer"),
                   meta)

    def __str__(self) -> str:
        shown = ", ".join("{" + ", ".join(map(str, g)) + "}" for g in self.multi[:8])
        more = " …" if len(self.multi) > 8 else ""
        return (f"{self.count} ghost groups of {self.layer or 'layer'} at |s| ≥ {self.threshold:g} "
                f"({len(self.multi)} with ≥ 2 channels{': ' + shown + more if shown else ''})")


def _labels(distance: np.ndarray, threshold: float, linkage: str) -> np.ndarray:
    n = distance.shape[0]
    if n == 1:
        return np.zeros(1, dtype=int)
    from sklearn.cluster import AgglomerativeClustering

    # sklearn merges while the linkage distance is < distance_threshold; nudge it so |s| = τ exactly joins
    cut = 1.0 - threshold + 1e-12
    model = AgglomerativeClustering(n_clusters=None, metric="precomputed", linkage=linkage,
                                    distance_threshold=cut)
    return model.fit_predict(distance)


def ghost_groups(
    similarity: ChannelSimilarity | torch.Tensor | np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    linkage: str = "complete",
    valid: torch.Tensor | np.ndarray | None = None,
) -> GhostGroups:
    """Group a layer's channels into ghost groups at similarity threshold τ = ``threshold``.

    Args:
        similarity: a ``ChannelSimilarity`` (its dead/constant channels are excluded) or a plain C×C matrix.
        threshold: τ in (0, 1]; channels join when 1 − |s| < 1 − τ under the linkage (``complete``: every pair
            in a group has |s| ≥ τ; ``average``: the mean |s| between the merged groups; ``single``: any one).
        linkage: ``complete`` (default), ``average`` or ``single``.
        valid: a boolean mask of channels to cluster (default: all for a plain matrix).

    Returns:
        ``GhostGroups``; ``count`` is the number of groups (intrinsic maps needed at τ), singletons included.
    """
    check_linkage(linkage)
    threshold = check_threshold(threshold)
    metric = layer = None
    if isinstance(similarity, ChannelSimilarity):
        matrix, mask = similarity.matrix, similarity.valid
        metric, layer = similarity.metric, similarity.layer
    else:
        matrix = torch.as_tensor(np.asarray(similarity)) if not isinstance(similarity, torch.Tensor) else similarity
        mask = torch.ones(matrix.shape[0], dtype=torch.bool) if matrix.dim() == 2 else None
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise GhostmapsError(f"similarity must be a square C×C matrix, got shape {tuple(matrix.shape)}.")
    if valid is not None:
        mask = _channel_mask(valid, matrix.shape[0])
    m = np.nan_to_num(matrix.detach().cpu().to(torch.float64).numpy(), nan=0.0)
    idx = np.flatnonzero(mask.numpy())
    sub = np.abs(m[np.ix_(idx, idx)])
    sub = (sub + sub.T) / 2
    np.fill_diagonal(sub, 0.0)
    # a channel with no partner at |s| ≥ τ is a group of its own under any linkage: cluster only the others
    linked = sub.max(axis=1) >= float(threshold) - 1e-12 if idx.size > 1 else np.zeros(idx.size, dtype=bool)
    part = sub[np.ix_(linked, linked)] if linked.any() else np.zeros((0, 0))
    return grouped(part, linked, idx, m.shape[0], float(threshold), linkage, metric, layer)


def _channel_mask(valid: Any, channels: int) -> torch.Tensor:
    """``valid`` as a CPU boolean tensor of length ``channels``, or a clear error (an index list or a mask of
    another length would silently cluster the wrong channels)."""
    v = valid.detach().cpu().numpy() if isinstance(valid, torch.Tensor) else np.asarray(valid)
    if v.dtype != np.bool_ or v.shape != (channels,):
        raise GhostmapsError(f"valid must be a boolean mask with one entry per channel ({channels}), got "
                             f"{v.dtype} of shape {v.shape}; for channel indices use a mask, e.g. "
                             f"np.isin(np.arange({channels}), indices).")
    return torch.from_numpy(v.copy())


def grouped(part: np.ndarray, linked: np.ndarray, idx: np.ndarray, channels: int, threshold: float,
            linkage: str, metric: str | None = None, layer: str | None = None) -> GhostGroups:
    """The ``GhostGroups`` of the V valid channels ``idx`` (of ``channels``) from ``linked``, the channels with a
    partner at |s| ≥ τ − 1e-12 (every other one is a singleton), and ``part``, the |similarity| among the linked
    ones (L×L, its diagonal not read): only those are clustered."""
    labels = np.full(channels, -1, dtype=int)
    multi: list[list[int]] = []
    single = idx[~linked]
    if linked.any():
        part = np.asarray(part, dtype=np.float64)
        part = (part + part.T) / 2  # exact for a symmetric matrix
        distance = np.clip(1.0 - part, 0.0, 2.0)
        np.fill_diagonal(distance, 0.0)
        raw = _labels(distance, threshold, linkage)
        members: dict[int, list[int]] = {}
        for channel, lab in zip(idx[linked].tolist(), raw.tolist(), strict=True):
            members.setdefault(int(lab), []).append(channel)
        multi = sorted((g for g in members.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))
        single = np.sort(np.concatenate([single, [g[0] for g in members.values() if len(g) == 1]]).astype(int))
    # largest first, ties by smallest channel: the groups of two or more, then the singletons in channel order
    for number, group in enumerate(multi):
        labels[group] = number
    labels[single] = np.arange(len(multi), len(multi) + single.size)
    groups = multi + [[c] for c in single.tolist()]
    return GhostGroups(labels.tolist(), groups, threshold, linkage, metric, layer)
