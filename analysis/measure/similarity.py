"""Channel-by-channel similarity of a layer's feature maps.

``channel_similarity`` pools every image and position into one C×C matrix, computed from the layer's
moments (one matrix product, see ``stats``), so the same function serves one image (GhostNet's Figure 1)
and a whole image set (by merging ``LayerStats``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from analysis._core.validation import METRICS, check_metric
from analysis.stats import DEFAULT_TOL, LayerStats

__all__ = ["METRICS", "ChannelSimilarity", "channel_similarity"]


@dataclass
class ChannelSimilarity:
    """A C×C similarity matrix with the channels that have no meaningful similarity masked.

    matrix: float64 C×C, symmetric, in [−1, 1]; rows/columns of dead or constant channels are 0.
    dead: channels that are all zero (within tol). constant: channels with a single value everywhere.
    """

    matrix: torch.Tensor
    metric: str
    dead: torch.Tensor
    constant: torch.Tensor
    layer: str | None = None

    @property
    def channels(self) -> int:
        return self.matrix.shape[0]

    @property
    def valid(self) -> torch.Tensor:
        """Channels that can take part in ghost pairs (neither dead nor constant)."""
        return ~(self.dead | self.constant)

    def to_numpy(self) -> np.ndarray:
        return self.matrix.cpu().numpy()

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "metric": self.metric,
            "channels": self.channels,
            "dead": torch.nonzero(self.dead).flatten().tolist(),
            "constant": torch.nonzero(self.constant).flatten().tolist(),
            "matrix": self.matrix.cpu().tolist(),
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def __repr__(self) -> str:
        return (f"ChannelSimilarity(layer={self.layer!r}, metric={self.metric!r}, channels={self.channels}, "
                f"dead={int(self.dead.sum())}, constant={int(self.constant.sum())})")


def channel_similarity(
    maps: torch.Tensor | LayerStats,
    metric: str = "cosine",
    tol: float = DEFAULT_TOL,
    layer: str | None = None,
) -> ChannelSimilarity:
    """Similarity of every pair of channels, pooled over images and positions.

    Args:
        maps: N×C×H×W feature maps (C×H×W is one image), or accumulated ``LayerStats``.
        metric: ``"cosine"`` — ⟨f_i, f_j⟩ / (‖f_i‖‖f_j‖) over all positions of all images, the plain "do these
            maps look alike" measure; or ``"pearson"`` — the same after subtracting each channel's mean, which
            does not reward two non-negative (post-ReLU) maps for merely being positive.
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
    )
