"""Layer structure for a Ghost module and its honest error: which channels to keep as intrinsic maps, which
cheap op makes each ghost (fitted on one part of the images), and the ghosts' error on the other part, in the
units the next layer sees (after the following BN, where one follows): :func:`ghostability`.
:func:`suggest_ratio` (:mod:`.ratio`) picks the largest ratio within an error budget."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from analysis._core.results import Result, floats, number, plain
from analysis._core.validation import check_odd_size, check_ratio
from analysis.reconstruct.choice import IntrinsicChoice, choose_intrinsic
from analysis.reconstruct.heldout import (
    DEFAULT_SPLIT,
    Split,
    channel_weights,
    heldout_channel_errors,
    pooled,
    split_maps,
)
from analysis.reconstruct.lstsq import (
    DEFAULT_RIDGE,
    _check_ridge,
    _layer_maps,
    _pair_fits,
    _PairFits,
    _relative,
)
from analysis.stats.intervals import Estimate, ratio_interval

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Ghostability", "ghostability"]

_CHUNK = 16  # held-out images per convolution chunk


@dataclass(eq=False)
class Ghostability(Result):
    """Result of :func:`ghostability`: a Ghost-module structure for one layer and its reconstruction error.

    Structure (exactly what ``GhostModule(ratio=ratio, dw_size=d)`` realises, whose output is
    ``cat([primary, cheap])[:, :C]`` with ``m = ceil(C / ratio)`` primary maps and ``m * (ratio - 1)`` cheap
    maps, cheap map ``p * (ratio - 1) + r`` made from primary map ``p``):

    * ``intrinsic`` - the m channels the primary conv keeps, in primary-output order; only the last may feed
      fewer than ``ratio - 1`` ghosts. ``slots[p]`` - the ghosts made from ``intrinsic[p]``;
      ``assignment`` - ghost -> its source; ``module_order`` - original channel at each module output
      position (undo with ``np.argsort``).
    * ``kernel`` (C x d x d), ``bias`` (C,) - fitted on the fit images; intrinsic channels get the identity.

    Errors (**ghost channels only**: the intrinsic channels are exact and do not dilute them):

    * ``ghost_error`` - sum over ghosts of ``w_j SSE_j`` / sum of ``w_j SS_j`` **on the held-out images**,
      with ``w_j`` the post-BN weights when a BN was given (``units``), else 1; ``ghost_error_interval`` - its
      jackknife interval over held-out images (photos with ``groups``); ``overall_error`` is the same number.
    * ``rel_error`` (C,) - each channel's held-out SSE / centred SS (0 for intrinsic and dead channels);
      ``mean_rel_error`` / ``max_rel_error`` over the ghosts.
    * ``post_bn_mse`` (C,) - held-out mean squared error after the BN (``w_j SSE_j / positions``), None without
      a BN; ``mean_post_bn_mse`` / ``max_post_bn_mse`` over the ghosts.
    * ``fit_ghost_error`` - ``ghost_error`` on the images the ops were fitted on (in-sample, optimistic).
    * ``split`` - which images were fitted and which reported on; ``choice`` - how the intrinsic channels were
      chosen (method, summed fit cost, lower bound when known); ``dead`` (C,) - all-zero channels.
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
    ghost_error: float
    ghost_error_interval: Estimate | None
    fit_ghost_error: float
    post_bn_mse: np.ndarray | None
    units: str
    split: Split
    choice: dict[str, Any]
    dead: np.ndarray

    @property
    def overall_error(self) -> float:
        """The ghost channels' held-out error (``ghost_error``): what callers of the old name now get."""
        return self.ghost_error

    @property
    def ghosts(self) -> list[int]:
        return sorted(self.assignment)

    @property
    def mean_rel_error(self) -> float:
        return float(self.rel_error[self.ghosts].mean()) if self.ghosts else 0.0

    @property
    def max_rel_error(self) -> float:
        return float(self.rel_error[self.ghosts].max()) if self.ghosts else 0.0

    @property
    def mean_post_bn_mse(self) -> float | None:
        if self.post_bn_mse is None:
            return None
        return float(self.post_bn_mse[self.ghosts].mean()) if self.ghosts else 0.0

    @property
    def max_post_bn_mse(self) -> float | None:
        if self.post_bn_mse is None:
            return None
        return float(self.post_bn_mse[self.ghosts].max()) if self.ghosts else 0.0

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
        return _predict(self, x)

    def summary(self) -> dict[str, Any]:
        """The layer's numbers as one flat dict."""
        iv = self.ghost_error_interval
        return plain({"ratio": self.ratio, "d": self.d, "channels": len(self.module_order),
                      "ghosts": len(self.assignment), "ghost_error": self.ghost_error,
                      "ghost_error_low": None if iv is None else iv.low,
                      "ghost_error_high": None if iv is None else iv.high, "mean_rel_error": self.mean_rel_error,
                      "max_rel_error": self.max_rel_error, "mean_post_bn_mse": self.mean_post_bn_mse,
                      "max_post_bn_mse": self.max_post_bn_mse, "fit_ghost_error": self.fit_ghost_error,
                      "units": self.units, "split": str(self.split), "choice": self.choice.get("method")})

    _COLUMNS = ("channel", "intrinsic", "source", "position", "bias", "rel_error", "post_bn_mse", "dead")

    def rows(self) -> list[dict[str, Any]]:
        """One row per channel: intrinsic or not, its source and module position, held-out error, dead."""
        position = {ch: k for k, ch in enumerate(self.module_order)}
        return [plain({"channel": j, "intrinsic": j not in self.assignment, "source": self.assignment.get(j, j),
                       "position": position[j], "bias": self.bias[j], "rel_error": self.rel_error[j],
                       "post_bn_mse": None if self.post_bn_mse is None else self.post_bn_mse[j],
                       "dead": self.dead[j]}) for j in range(len(self.module_order))]

    def to_dict(self) -> dict[str, Any]:
        return plain({
            "ratio": self.ratio, "d": self.d, "intrinsic": self.intrinsic, "slots": self.slots,
            "assignment": {str(g): s for g, s in self.assignment.items()}, "module_order": self.module_order,
            "kernel": self.kernel, "bias": self.bias, "rel_error": self.rel_error, "ghost_error": self.ghost_error,
            "ghost_error_interval": None if self.ghost_error_interval is None else self.ghost_error_interval.to_dict(),
            "fit_ghost_error": self.fit_ghost_error, "post_bn_mse": self.post_bn_mse, "units": self.units,
            "split": self.split.to_dict(), "choice": self.choice, "dead": self.dead})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        d, c = int(data["d"]), len(data["module_order"])
        f = floats
        iv = data.get("ghost_error_interval")
        return cls(ratio=int(data["ratio"]), d=d, intrinsic=[int(v) for v in data["intrinsic"]],
                   slots=[[int(v) for v in s] for s in data["slots"]],
                   assignment={int(g): int(s) for g, s in data["assignment"].items()},
                   module_order=[int(v) for v in data["module_order"]],
                   kernel=floats(data["kernel"]).reshape(c, d, d), bias=f(data["bias"]),
                   rel_error=f(data["rel_error"]), ghost_error=number(data["ghost_error"]),
                   ghost_error_interval=None if iv is None else Estimate.from_dict(iv),
                   fit_ghost_error=number(data["fit_ghost_error"]),
                   post_bn_mse=None if data.get("post_bn_mse") is None else f(data["post_bn_mse"]),
                   units=str(data["units"]), split=Split.from_dict(data["split"]), choice=dict(data["choice"]),
                   dead=np.asarray(data["dead"], dtype=bool))

    def __str__(self) -> str:
        iv = self.ghost_error_interval
        ci = "" if iv is None else f" [{iv.low:.3g}, {iv.high:.3g}]"
        return (f"Ghostability(ratio={self.ratio}, d={self.d}, C={len(self.module_order)}, "
                f"intrinsic={len(self.intrinsic)}: ghost error {self.ghost_error:.4g}{ci} held out "
                f"(in-sample {self.fit_ghost_error:.4g}), per ghost mean {self.mean_rel_error:.3g} / max "
                f"{self.max_rel_error:.3g}; {self.units}; {self.split})")


def _predict(g: Ghostability, x: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    ghosts = g.ghosts
    if ghosts:
        src = torch.as_tensor([g.assignment[j] for j in ghosts], dtype=torch.long)
        k = torch.as_tensor(g.kernel[ghosts], dtype=torch.float64)[:, None]
        b = torch.as_tensor(g.bias[ghosts], dtype=torch.float64)
        out[:, ghosts] = F.conv2d(x[:, src], k, b, padding=g.d // 2, groups=len(ghosts))
    return out


def _structure(fits: _PairFits, ratio: int, w: np.ndarray | None, method: str) -> tuple[IntrinsicChoice, np.ndarray,
                                                                                        np.ndarray]:
    """The intrinsic choice minimising the (post-BN weighted) summed SSE on the fit images, and its kernels."""
    c, d = len(fits.ss), fits.d
    ww = np.ones(c) if w is None else w
    choice = choose_intrinsic(fits.sse * ww[None, :], ratio, method, baseline=fits.ss * ww)
    q = d * d
    kernel = np.zeros((c, q))
    bias = np.zeros(c)
    kernel[choice.intrinsic, q // 2] = 1.0
    for p, s in zip(choice.intrinsic, choice.slots, strict=True):
        for g in s:
            kernel[g] = fits.theta[p, :, g]
            bias[g] = fits.bias[p, g]
    return choice, kernel.reshape(c, d, d), bias


def _from_fits(fits: _PairFits, eval_x: torch.Tensor, split: Split, ratio: int, w: np.ndarray | None, method: str,
               groups: Sequence[Any] | None, level: float) -> Ghostability:
    choice, kernel, bias = _structure(fits, ratio, w, method)
    c, d = len(fits.ss), fits.d
    slots = choice.slots
    assignment = {g: p for p, s in zip(choice.intrinsic, slots, strict=True) for g in s}
    ghosts = sorted(assignment)
    fit_sse = np.zeros(c)
    for g, p in assignment.items():
        fit_sse[g] = fits.sse[p, g]
    g0 = Ghostability(ratio, d, list(choice.intrinsic), [list(s) for s in slots], assignment,
                      list(choice.intrinsic) + [g for s in slots for g in s], kernel, bias, np.zeros(c), 0.0, None,
                      pooled(fit_sse, fits.ss, ghosts, w), None,
                      "post-BN (channel j weighted by gamma_j^2 / (var_j + eps))" if w is not None else
                      "the layer's output (no BN given: channels weighted by their own variance)", split,
                      {**choice.to_dict(), "intrinsic": None, "slots": None}, fits.dead.copy())
    g0.choice = {k: v for k, v in g0.choice.items() if v is not None or k == "lower_bound"}
    # held-out errors, per image and channel, in chunks of images
    x = eval_x.to(torch.float64).cpu()
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    err_parts, ss_parts = [], []
    for n0 in range(0, x.shape[0], _CHUNK):
        xb = x[n0:n0 + _CHUNK]
        e, _ = heldout_channel_errors(_predict(g0, xb), xb)
        err_parts.append(e)
        ss_parts.append(((xb - mean) ** 2).sum(dim=(2, 3)).numpy())
    err, ss = np.concatenate(err_parts), np.concatenate(ss_parts)  # N_eval x C
    sse_c, ss_c = err.sum(0), ss.sum(0)
    sumsq = (x ** 2).sum(dim=(0, 2, 3)).numpy()
    rel = _relative(sse_c, ss_c, sumsq)
    rel[~np.isin(np.arange(c), ghosts)] = 0.0
    g0.rel_error = rel
    g0.ghost_error = pooled(sse_c, ss_c, ghosts, w)
    positions = x.shape[0] * x.shape[2] * x.shape[3]
    g0.post_bn_mse = None if w is None else np.where(np.isin(np.arange(c), ghosts), w * sse_c / positions, 0.0)
    if ghosts and x.shape[0] >= 2:
        ww = np.ones(c) if w is None else w
        g0.ghost_error_interval = ratio_interval((err[:, ghosts] * ww[ghosts]).sum(1),
                                                 (ss[:, ghosts] * ww[ghosts]).sum(1), level, groups)
    return g0


def ghostability(maps: Any, ratio: int = 2, d: int = 3, *, bn: Any = None, heldout: Any = None,
                 split: float | None = DEFAULT_SPLIT, seed: int = 0, groups: Sequence[Any] | None = None,
                 choice: str = "auto", ridge: float = DEFAULT_RIDGE, level: float = 0.95) -> Ghostability:
    """How well a Ghost module with this ``ratio`` and d x d cheap ops reproduces a layer's maps, held out.

    Args:
        maps: N x C x H x W outputs of the layer (before its BN).
        ratio, d: the Ghost module's ratio s and cheap-op kernel size.
        bn: the BN that follows the layer (a ``BatchNorm2d``, its weights, see
            :func:`~analysis.reconstruct.heldout.channel_weights`): errors in post-BN units, and the intrinsic
            choice minimises them; None keeps the layer's own units.
        heldout: maps of other images to report on (the fit uses all of ``maps``). Otherwise ``split`` of the
            images (of the photos, with ``groups``: the photo of each image) is held out with ``seed``;
            ``split=None`` reports in-sample (labelled so in ``split``).
        choice: the intrinsic-choice method (:func:`~analysis.reconstruct.choice.choose_intrinsic`): exact
            matching for s = 2, capacitated with swaps (and exact on small layers) for s > 2; ``"greedy"``
            is the old facility-location pick, for comparison.
        level: confidence level of ``ghost_error_interval``.

    Steps: fit all C x C cheap ops on the fit images (shifted Gram products); choose the intrinsic channels
    and assign the ghosts under the Ghost capacity minimising the summed (weighted) SSE; report the ghosts'
    errors on the held-out images. The cheap ops are linear (conv + bias, i.e. conv + BN); a ReLU after the
    cheap op is not modelled.
    """
    ratio = check_ratio(ratio)
    d = check_odd_size(d)
    ridge = _check_ridge(ridge)
    x = _layer_maps(maps)
    fit_x, eval_x, sp = split_maps(x, heldout, split, seed, groups)
    w = channel_weights(bn, x.shape[1])
    eval_groups = None
    if groups is not None and sp.eval_index is not None:
        names = [str(g) for g in groups]
        eval_groups = [names[i] for i in sp.eval_index]
    return _from_fits(_pair_fits(fit_x, d, ridge), eval_x, sp, ratio, w, choice, eval_groups, level)
