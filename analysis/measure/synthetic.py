"""Synthetic feature maps with a known population: for checking the intervals by simulation.

Channel vector at position p of image n (Gaussian, so every population value is closed form):

    x(n, p) = μ + A a_n + B e(n, p) + ψ ε(n, p) + L φ(p),

a_n ~ N(0, I) one draw per image (the per-image effect: positions of one image are dependent, so images, not
positions, are the unit of resampling), e and ε ~ N(0, I) per position, φ(p) a fixed spatial layout shared by
all images (what makes maps of *different* images alike at the same position). Over all positions of the
population, Σ = AAᵀ + BBᵀ + ψ²I + L Cov_p(φ) Lᵀ; the noise-matched null compares a channel of one image with a
channel of another, independent one at the same position, whose covariance is only the layout's,
L Cov_p(φ) Lᵀ. A ``Population`` with ``paired`` set also draws a second set of maps on the same images (sharing
a_n): a stand-in for the untrained network.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Population", "population_scores"]


def population_scores(cov: np.ndarray, null_cov: np.ndarray | None = None) -> dict[str, float]:
    """Population mean squared correlation over pairs i < j and participation ratio V / (1 + (V − 1)·msq)
    (= V² / ‖R‖²_F), of ``cov`` and, with ``null_cov`` (normalised by ``cov``'s variances), of the null."""
    d = np.sqrt(np.diag(cov))
    v = cov.shape[0]
    iu = np.triu_indices(v, 1)
    out = {}
    for tag, matrix in (("", cov), ("null_", null_cov)):
        if matrix is None:
            continue
        r = matrix / np.outer(d, d)
        msq = float((r[iu] ** 2).mean())
        out[tag + "mean_sq_similarity"] = msq
        out[tag + "participation_ratio"] = v / (1 + (v - 1) * msq)
    return out


@dataclass
class Population:
    """A synthetic population of maps (module docstring). ``image``, ``within``: the loadings A and B (C×r);
    ``noise``: ψ; ``layout``: L (C×q) with q layout patterns over ``size``×``size`` positions."""

    image: np.ndarray
    within: np.ndarray
    noise: float = 0.5
    layout: np.ndarray | None = None
    size: int = 8
    mean: float = 1.0
    paired: Population | None = None

    @classmethod
    def random(cls, channels: int, seed: int = 0, independent: bool = False, layout: bool = False,
               paired: bool = False, size: int = 8) -> Population:
        """A population of ``channels`` channels: correlated through 3 shared factors (half the channels
        weakly), or ``independent`` ones; with a shared spatial layout and a paired second population
        (independent channels too when ``independent``)."""
        rng = np.random.default_rng(seed)
        c = channels
        if independent:
            image, within = np.diag(rng.uniform(0.4, 0.8, c)), np.diag(rng.uniform(0.6, 1.0, c))
        else:
            image, within = rng.normal(size=(c, 3)) * 0.5, rng.normal(size=(c, 3)) * 0.8
            image[c // 2:] *= 0.15
            within[c // 2:] *= 0.15
        lay = rng.normal(size=(c, 2)) * 0.4 if layout else None
        second = None
        if paired:  # the same per-image factors seen through other, weaker loadings (one per channel when
            # the channels are independent: then the untrained stand-in's are too, and the true excess is 0)
            loads = np.diag(rng.uniform(0.2, 0.5, c)) if independent else rng.normal(size=image.shape) * 0.3
            second = cls(image=loads, within=np.diag(rng.uniform(0.6, 1.0, c)), noise=0.5, size=size)
        return cls(image=image, within=within, noise=0.5, layout=lay, size=size, paired=second)

    def _phi(self) -> np.ndarray:
        """The layout patterns φ(p): q smooth fixed maps over the positions (q × P)."""
        q = 0 if self.layout is None else self.layout.shape[1]
        yy, xx = np.meshgrid(np.linspace(-1, 1, self.size), np.linspace(-1, 1, self.size), indexing="ij")
        base = [np.sin(np.pi * (k + 1) * xx / 2) * np.cos(np.pi * yy * (k + 1) / 3) for k in range(q)]
        return np.array(base).reshape(q, -1) if q else np.zeros((0, self.size * self.size))

    def covariances(self) -> tuple[np.ndarray, np.ndarray]:
        """(Σ over all positions, the null's covariance of different images at one position)."""
        c = self.image.shape[0]
        layout = np.zeros((c, c))
        if self.layout is not None:
            phi = self._phi()
            layout = self.layout @ np.cov(phi, bias=True).reshape(phi.shape[0], phi.shape[0]) @ self.layout.T
        cov = self.image @ self.image.T + self.within @ self.within.T + self.noise ** 2 * np.eye(c) + layout
        return cov, layout

    def truth(self) -> dict[str, float]:
        """Population scores of the observed maps and their null, and (``paired``) of the second set."""
        cov, null = self.covariances()
        out = population_scores(cov, null)
        if self.paired is not None:
            out.update({f"paired_{k}": v for k, v in population_scores(self.paired.covariances()[0]).items()})
        return out

    def sample(self, images: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``images`` maps, N×C×size×size (float64), and the paired second set on the same images."""
        c = self.image.shape[0]
        a = rng.normal(size=(images, self.image.shape[1]))
        x = self._draw(a, images, rng)
        second = None
        if self.paired is not None:
            second = self.paired._draw(a[:, : self.paired.image.shape[1]], images, rng)
        shape = (images, c, self.size, self.size)
        return torch.from_numpy(x.reshape(shape)), None if second is None else torch.from_numpy(second.reshape(shape))

    def _draw(self, a: np.ndarray, images: int, rng: np.random.Generator) -> np.ndarray:
        c, p = self.image.shape[0], self.size * self.size
        x = (a @ self.image.T)[:, :, None] + np.einsum("cr,nrp->ncp", self.within,
                                                       rng.normal(size=(images, self.within.shape[1], p)))
        x += self.noise * rng.normal(size=(images, c, p)) + self.mean
        if self.layout is not None:
            x += (self.layout @ self._phi())[None]
        return x
