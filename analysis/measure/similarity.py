"""Channel-by-channel similarity of a layer's feature maps.

``channel_similarity`` pools every image and position into one C×C matrix, computed from the layer's
moments (one matrix product, see ``stats``), so the same function serves one image (GhostNet's Figure 1)
and a whole image set (by merging ``LayerStats``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from analysis._core.validation import DEFAULT_METRIC, METRICS, check_metric
from analysis.stats import DEFAULT_TOL, LayerStats

__all__ = ["DEFAULT_METRIC", "METRICS", "SPARSE_APOZ", "ChannelSimilarity", "channel_similarity"]
from analysis._core.results import Result, floats, plain

if TYPE_CHECKING:
    from typing_extensions import Self

SPARSE_APOZ = 0.8  # a channel zero (|x| ≤ tol) on at least this share of positions is "sparse"


@dataclass(eq=False)
class ChannelSimilarity(Result):
    """A C×C similarity matrix with the channels that have no meaningful similarity masked.

    matrix: float64 C×C, symmetric, in [−1, 1]; rows/columns of dead or constant channels are 0.
    dead: channels that are all zero (within tol). constant: channels with a single value everywhere.
    apoz: per channel, the share of positions that are zero (within tol); ``sparse`` marks APoZ ≥ 0.8.
    ``rows()``: one per channel i: ``channel``, ``dead``, ``constant``, ``apoz`` and the similarity to every channel j under
    the column ``str(j)`` (the matrix as a wide table). ``to_dict`` holds the matrix as nested lists and the
    dead/constant channels as index lists; equality compares ``to_dict()``.
    """

    matrix: torch.Tensor
    metric: str
    dead: torch.Tensor
    constant: torch.Tensor
    layer: str | None = None
    apoz: torch.Tensor | None = None

    @property
    def sparse(self) -> torch.Tensor:
        """Valid channels that are zero on at least ``SPARSE_APOZ`` of the positions: a high similarity
        between two of them says mostly that both are off together, not that one is a ghost of the other."""
        if self.apoz is None:
            return torch.zeros(self.channels, dtype=torch.bool)
        return self.valid & (self.apoz >= SPARSE_APOZ)

    @property
    def channels(self) -> int:
        return self.matrix.shape[0]

    @property
    def valid(self) -> torch.Tensor:
        """Channels that can take part in ghost pairs (neither dead nor constant)."""
        return ~(self.dead | self.constant)

    def to_numpy(self) -> np.ndarray:
        return self.matrix.cpu().numpy()

    _COLUMNS = ("channel", "dead", "constant", "apoz")

    def rows(self) -> list[dict[str, Any]]:
        m = plain(self.matrix)
        dead, constant = self.dead.tolist(), self.constant.tolist()
        apoz = [None] * self.channels if self.apoz is None else plain(self.apoz)
        return [{"channel": i, "dead": dead[i], "constant": constant[i], "apoz": apoz[i],
                 **{str(j): v for j, v in enumerate(row)}} for i, row in enumerate(m)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "metric": self.metric,
            "channels": self.channels,
            "dead": torch.nonzero(self.dead).flatten().tolist(),
            "constant": torch.nonzero(self.constant).flatten().tolist(),
            "apoz": None if self.apoz is None else plain(self.apoz),
            "sparse": torch.nonzero(self.sparse).flatten().tolist(),
            "matrix": plain(self.matrix),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        c = int(data["channels"])
        matrix = torch.from_numpy(floats(data["matrix"]).reshape(c, c))

        def mask(idx: list[int]) -> torch.Tensor:
            out = torch.zeros(c, dtype=torch.bool)
            out[torch.as_tensor(idx, dtype=torch.long)] = True
            return out

        apoz = data.get("apoz")
        return cls(matrix, data["metric"], mask(data["dead"]), mask(data["constant"]), data.get("layer"),
                   None if apoz is None else torch.from_numpy(floats(apoz)))

    def __repr__(self) -> str:
        return (f"ChannelSimilarity(layer={self.layer!r}, metric={self.metric!r}, channels={self.channels}, "
                f"dead={int(self.dead.sum())}, constant={int(self.constant.sum())})")


def channel_similarity(
    maps: torch.Tensor | LayerStats,
    metric: str = DEFAULT_METRIC,
    tol: float = DEFAULT_TOL,
    layer: str | None = None,
) -> ChannelSimilarity:
    """Similarity of every pair of channels, pooled over images and positions.

    Args:
        maps: N×C×H×W feature maps (C×H×W is one image), or accumulated ``LayerStats``.
        metric: ``"pearson"`` (default) — the correlation over all positions of all images: invariant to each
            channel's scale and offset, which the BatchNorm after a conv removes, so it asks whether a cheap op
            plus that BN could make one channel from the other; or ``"cosine"`` — ⟨f_i, f_j⟩ / (‖f_i‖‖f_j‖)
            without removing the means, biased upwards for non-negative (post-ReLU) maps, which look alike
            merely for being positive (independent ReLU(N(0, 1)) maps score 1/π ≈ 0.32).
        tol: values with |x| ≤ tol count as zero when finding dead channels (ignored for ``LayerStats``).
        layer: a name to carry along in the result.

    Returns:
        ``ChannelSimilarity`` with the matrix and the dead/constant masks; never NaN.
    """
    check_metric(metric)
    stats = maps if isinstance(maps, LayerStats) else LayerStats.from_maps(maps, tol=tol)
    return ChannelSimilarity(
        matrix=stats.similarity_matrix(metric).cpu(),
        metric=metric,
        dead=stats.dead.cpu(),
        constant=stats.constant.cpu(),
        layer=layer,
        apoz=stats.apoz.cpu(),
    )
