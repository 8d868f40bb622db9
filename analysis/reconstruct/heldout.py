"""Where a fit is made and where it is reported: the split of a layer's images into a fit part and a held-out
part (explicit maps, or a seeded fraction, by image or by photo), and the units errors are reported in (after
the following BatchNorm, where one follows).

Post-BN units. A BN after the conv makes ``y_j = gamma_j (x_j - mu_j) / sqrt(sigma_j^2 + eps) + beta_j``, so
an error ``e`` in channel j's pre-BN map reaches the next layer as ``gamma_j e / sqrt(sigma_j^2 + eps)``:
its squared error is weighted by ``w_j = gamma_j^2 / (sigma_j^2 + eps)`` (running statistics). A channel's
relative error (SSE over its variance) does not change with ``w_j``; sums over channels and post-BN MSEs do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from analysis._core.errors import GhostmapsError
from analysis._core.results import Result, plain
from analysis.reconstruct.lstsq import _layer_maps

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["DEFAULT_SPLIT", "Split", "channel_weights", "split_maps"]

#: Fraction of the images held out when no held-out maps are given.
DEFAULT_SPLIT = 0.5


@dataclass(frozen=True, eq=False)
class Split(Result):
    """How a fit's images were divided. ``kind``: ``"held-out maps"`` (given separately), ``"seeded split"``
    (``fraction`` of the images, or of the photos when ``by_photo``, held out with ``seed``) or
    ``"in-sample"`` (fitted and reported on the same images: optimistic, labelled so)."""

    kind: str
    n_fit: int
    n_eval: int
    fraction: float | None = None
    seed: int | None = None
    by_photo: bool = False
    eval_index: tuple[int, ...] | None = None

    @property
    def in_sample(self) -> bool:
        return self.kind == "in-sample"

    _COLUMNS = ("kind", "n_fit", "n_eval", "fraction", "seed", "by_photo")

    def rows(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in self.to_dict().items() if k != "eval_index"}]

    def to_dict(self) -> dict[str, Any]:
        return plain({"kind": self.kind, "n_fit": self.n_fit, "n_eval": self.n_eval, "fraction": self.fraction,
                      "seed": self.seed, "by_photo": self.by_photo, "eval_index": self.eval_index})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        idx = data.get("eval_index")
        return cls(str(data["kind"]), int(data["n_fit"]), int(data["n_eval"]), data.get("fraction"),
                   data.get("seed"), bool(data.get("by_photo", False)),
                   None if idx is None else tuple(int(i) for i in idx))

    def __str__(self) -> str:
        if self.in_sample:
            return f"in-sample: fitted and reported on the same {self.n_fit} images"
        how = ("given held-out maps" if self.kind == "held-out maps" else
               f"{self.fraction:g} of the {'photos' if self.by_photo else 'images'} held out, seed {self.seed}")
        return f"fitted on {self.n_fit} images, reported on {self.n_eval} held-out images ({how})"


def split_maps(maps: Any, heldout: Any = None, split: float | None = DEFAULT_SPLIT, seed: int = 0,
               groups: Sequence[Any] | None = None) -> tuple[torch.Tensor, torch.Tensor, Split]:
    """``(fit maps, held-out maps, Split)`` for a layer's N x C x H x W ``maps``.

    ``heldout``: maps of other images (same C, H, W): fit on all of ``maps``, report on these. Otherwise
    ``split``: the fraction of images held out, drawn with ``seed`` (at least one image on each side); with
    ``groups`` (the photo of each image, e.g. ``ImageSource.photo_names`` for views) whole photos are held out,
    so no photo is on both sides. ``split=None``: in-sample (reported on the fitted images, labelled so).
    """
    x = _layer_maps(maps)
    n = x.shape[0]
    if heldout is not None:
        h = _layer_maps(heldout, "heldout")
        if tuple(h.shape[1:]) != tuple(x.shape[1:]):
            raise GhostmapsError(f"heldout maps must match maps in C x H x W, got {tuple(h.shape[1:])} and "
                                 f"{tuple(x.shape[1:])}; capture the same layer on other images.")
        return x, h.to(x.device), Split("held-out maps", n, h.shape[0])
    if split is None:
        return x, x, Split("in-sample", n, n)
    if isinstance(split, bool) or not isinstance(split, (int, float)) or not 0 < split < 1:
        raise GhostmapsError(f"split must be the held-out fraction in (0, 1) (e.g. 0.5), or None for in-sample "
                             f"numbers; got {split!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise GhostmapsError(f"seed must be an integer, got {seed!r}.")
    units = np.arange(n)
    if groups is not None:
        names = [str(g) for g in groups]
        if len(names) != n:
            raise GhostmapsError(f"groups must name the photo of each of the {n} images, got {len(names)}.")
        uniq, units = np.unique(np.asarray(names), return_inverse=True)
        k = len(uniq)
    else:
        k = n
    if k < 2:
        raise GhostmapsError(f"cannot hold out part of {k} {'photo' if groups is not None else 'image'}: pass "
                             "heldout= maps of other images, more images, or split=None for in-sample numbers.")
    n_out = min(k - 1, max(1, int(round(split * k))))
    out_units = np.random.default_rng(int(seed)).permutation(k)[:n_out]
    mask = np.isin(units, out_units)
    fit_idx = torch.as_tensor(np.flatnonzero(~mask), device=x.device)
    eval_idx = np.flatnonzero(mask)
    sp = Split("seeded split", int((~mask).sum()), int(mask.sum()), float(split), int(seed), groups is not None,
               tuple(int(i) for i in eval_idx))
    return x[fit_idx], x[torch.as_tensor(eval_idx, device=x.device)], sp


def channel_weights(bn: Any, channels: int) -> np.ndarray | None:
    """Per-channel weights ``gamma_j^2 / (sigma_j^2 + eps)`` of the BN that follows a layer (see the module
    docstring), or None for ``bn=None`` (errors stay in the layer's own units).

    ``bn``: a ``BatchNorm2d`` with running statistics, a dict with ``running_var`` (and optional ``weight``,
    ``eps``), a ``(weight, running_var, eps)`` tuple, or the C weights themselves (a 1-D array or tensor).
    """
    if bn is None:
        return None
    if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
        if bn.running_var is None:
            raise GhostmapsError("bn has no running statistics (track_running_stats=False); pass its weights as "
                                 "gamma^2 / (var + eps) computed on your data instead.")
        gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(bn.running_var)
        var, eps = bn.running_var.detach(), float(bn.eps)
    elif isinstance(bn, dict):
        if "running_var" not in bn:
            raise GhostmapsError("a bn dict needs 'running_var' (and optionally 'weight' and 'eps').")
        var = torch.as_tensor(bn["running_var"])
        gamma = torch.as_tensor(bn.get("weight", torch.ones_like(var)))
        eps = float(bn.get("eps", 1e-5))
    elif isinstance(bn, tuple) and len(bn) == 3:
        gamma, var, eps = torch.as_tensor(bn[0]), torch.as_tensor(bn[1]), float(bn[2])
    else:
        w = torch.as_tensor(np.asarray(bn) if not isinstance(bn, torch.Tensor) else bn.detach())
        return _checked(w.double().cpu().numpy().reshape(-1), channels)
    gamma, var = gamma.double().cpu().reshape(-1), var.double().cpu().reshape(-1)
    if gamma.shape != var.shape:
        raise GhostmapsError(f"bn weight and running_var differ in length ({gamma.numel()} vs {var.numel()}).")
    return _checked((gamma * gamma / (var + eps)).numpy(), channels)


def _checked(w: np.ndarray, channels: int) -> np.ndarray:
    if w.shape != (channels,):
        raise GhostmapsError(f"the BN has {w.size} channels but the maps have {channels}; pass the BN that "
                             "follows this layer.")
    if not np.all(np.isfinite(w)) or w.min() < 0:
        raise GhostmapsError("BN channel weights must be finite and >= 0.")
    return w


def heldout_channel_errors(pred: torch.Tensor, target: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per image and channel: squared error of ``pred`` and centred sum of squares of ``target`` (centred on
    the target's mean over all its images), both N x C, float64."""
    t = target.double()
    err = ((pred.double() - t) ** 2).sum(dim=(2, 3))
    mean = t.mean(dim=(0, 2, 3), keepdim=True)
    ss = ((t - mean) ** 2).sum(dim=(2, 3))
    return err.cpu().numpy(), ss.cpu().numpy()


def pooled(err: np.ndarray, ss: np.ndarray, channels: Sequence[int], w: np.ndarray | None) -> float:
    """Relative error pooled over ``channels``: sum_j w_j SSE_j / sum_j w_j SS_j (w = 1 without a BN)."""
    idx = list(channels)
    if not idx:
        return 0.0
    ww = np.ones(len(idx)) if w is None else w[idx]
    num, den = float((ww * err[idx]).sum()), float((ww * ss[idx]).sum())
    if den > 0:
        return num / den
    return 0.0 if num <= 1e-12 * max(1.0, float(np.abs(err[idx]).sum())) else math.inf
