"""The moments of a set of images as plain float64 matrices (what the scores are computed from), and the
seeded position subsets of ``positions=``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

__all__ = ["PairedMoments", "position_subset"]


@dataclass
class PairedMoments:
    """Moments about ``shift`` (y = x − shift) of a set of images, float64:

    * ``gram`` = Σ y yᵀ over all positions of all images (C×C), ``sums`` = Σ y, ``count`` positions, ``images``;
    * ``cross`` = Σ over image pairs (a, b) and positions of y_a yᵀ_b + y_b yᵀ_a (C×C; its diagonal unused),
      ``pair_sums`` = Σ y over the paired images, ``pair_count`` their positions.
    """

    shift: torch.Tensor
    gram: torch.Tensor
    cross: torch.Tensor
    sums: torch.Tensor
    count: float
    pair_sums: torch.Tensor
    pair_count: float
    images: int

    def centre(self, metric: str) -> torch.Tensor:
        """The point (in shifted units) the metric measures about: the mean (Pearson) or zero (cosine)."""
        if metric == "pearson":
            return self.sums / max(self.count, 1.0)
        return -self.shift

    def centred(self, metric: str, centre: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(Σ (y − c)(y − c)ᵀ, Σ_pairs (y_a − c)(y_b − c)ᵀ + (y_b − c)(y_a − c)ᵀ) about c = ``centre`` (default:
        the metric's own, ``centre(metric)``). Divided by ``count`` and ``pair_count`` they are the observed and
        null second moments about c."""
        c = self.centre(metric) if centre is None else centre
        return _about(self.gram, self.sums, self.count, c), _about(self.cross, self.pair_sums, self.pair_count, c)

    def centred_gram(self, metric: str, centre: torch.Tensor | None = None) -> torch.Tensor:
        """The first of ``centred`` alone (what the observed similarity needs)."""
        c = self.centre(metric) if centre is None else centre
        return _about(self.gram, self.sums, self.count, c)


def _about(moment: torch.Tensor, sums: torch.Tensor, count: float, c: torch.Tensor) -> torch.Tensor:
    """Σ (y − c)(y − c)ᵀ from Σ y yᵀ (``moment``) and Σ y: M − s cᵀ − c sᵀ + n c cᵀ = M − (r + rᵀ) with
    r = (s − (n/2) c) cᵀ, symmetrised ((g + gᵀ)/2: the products' diagonal blocks need not be bitwise symmetric)."""
    r = torch.outer(sums - (count / 2) * c, c)
    g = moment - (r + r.T)
    return torch.add(g, g.T).mul_(0.5)


@lru_cache(maxsize=4096)
def _subset(seed: int, pair: int, p: int, m: int) -> torch.Tensor:
    rng = np.random.default_rng([int(seed), int(pair), int(p)])
    return torch.from_numpy(np.sort(rng.choice(p, size=m, replace=False))).long()


def position_subset(seed: int, pair: int, p: int, m: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The m positions (sorted, out of p) that image pair ``pair`` contributes under ``positions=m``: seeded by
    (seed, pair, p), so both images of a pair, every layer with maps of p positions, a resumed run and every
    process draw the same ones."""
    return _subset(seed, pair, p, m).to(device)
